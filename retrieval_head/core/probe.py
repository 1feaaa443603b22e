"""The argmax probe: where each query head looks at each decode step.

The retrieval score asks, at every decode step, which key each query head attends to most.
``ArgmaxProbe`` is the hook (``hook.Hook``) that answers: it has every decode step computed
from one float32 score row per head (``attend.decode_step``: masked as the backend masks it,
softcapped, with sink logits) and takes the argmax over keys. The output is the step's own,
so the model decodes as it would under the backend. ``span_mass`` reads the same step's
softmax mass on a key span (needle-mass: ``engine.reads.SpanMassHook``).

Worked example (a notebook)::

    probe = ArgmaxProbe()
    with intervene(model, hooks=[probe]):
        out = model(input_ids=last_token, cache=cache)          # one decode step
    probe.positions(cache.get_seq_length() - 1, num_layers)     # [layers, batch, heads]
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .attend import Call, Step
from .hook import Hook


class ArgmaxProbe(Hook):
    """Records, per decode step, each query head's argmax key position.

    Positions are stored relative to the end of that layer's cache (``j - kv_len``, in
    ``[-kv_len, -1]``), so sliding-window layers whose cache holds only the last W keys
    map to the same absolute positions as full layers: ``abs = query_position + 1 + rel``.
    The argmax is taken over float32 scores (pre-softmax logits, masked, softcapped),
    which orders keys exactly as the attention weights do; a sink logit never wins it.
    """

    def __init__(self):
        self.rel: dict[int, torch.Tensor] = {}  # layer_idx -> [batch, heads] long

    def computes(self, call: Call) -> bool:
        return call.is_decode

    def computed(self, call: Call, step: Step) -> None:
        b, num_heads, _, kv_len = step.scores.shape
        self.rel[call.layer] = step.scores.argmax(dim=-1).reshape(b, num_heads) - kv_len

    def clear(self) -> None:
        self.rel = {}

    def positions(self, query_position: int | torch.Tensor, num_layers: int) -> torch.Tensor:
        """Absolute argmax positions ``[layers, batch, heads]`` of the last decode step.

        query_position: absolute position of the step's query token (scalar, or [batch]).
        Raises UnsupportedModelError when a layer never reached the interface.
        """
        missing = [i for i in range(num_layers) if i not in self.rel]
        if missing:
            raise UnsupportedModelError(
                f"layers {missing[:5]}{'...' if len(missing) > 5 else ''} never called the attention interface"
            )
        device = self.rel[0].device
        rel = torch.stack([self.rel[i].to(device) for i in range(num_layers)])
        qp = torch.as_tensor(query_position, device=device).reshape(1, -1, 1)
        return rel + qp + 1


def span_mass(probs: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Decode step: float ``[b, H]`` mass of fp32 ``probs [b, H, 1, T]`` on each batch row's
    key span ``spans [b, 2]`` (absolute positions; the cache holds every key).

    >>> p = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(1, 1, 1, 4)
    >>> span_mass(p, torch.tensor([[1, 3]])).tolist()
    [[0.5]]
    """
    b, T = probs.shape[0], probs.shape[-1]
    j = torch.arange(T, device=probs.device)
    s = spans.to(probs.device)
    keep = (j[None, :] >= s[:, :1]) & (j[None, :] < s[:, 1:])  # [b, T]
    return (probs * keep[:, None, None, :]).sum(-1).reshape(b, -1)
