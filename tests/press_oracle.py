"""The independent oracle of a press's masked simulation, and small presses to test it with
(tests/test_pressing.py, tests/test_press_mask.py; nothing here is a test).

The oracle knows nothing of the cache, the masks, the hooks or ``intervene``: each greedy
step is one full forward (no cache) over prompt + answer so far through the modeling file's
own eager function, under a ``[batch, heads, query, key]`` additive mask built here. In each
layer the oracle shows the press, one batch row at a time, the keys, values and last queries
that very forward computed before the row's compression point ``at`` (rows before ``at`` see
every key, so these are the compressed cache's), and hides from the rows at ``at`` or later
the keys before ``at`` the press drops.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from families import build
from oracle_attention import attention_as

from retrieval_head.core.seen import Seen
from retrieval_head.models.shape import ModelShape

LENGTH, PAD, STEPS, BUDGET = 40, 6, 6, 0.25  # the families' windows are 16 keys
AT = {"decode": torch.tensor([LENGTH, LENGTH]), "context": torch.tensor([LENGTH - 8, LENGTH - 11])}  # questions: 8, 11
START = torch.tensor([PAD, 0])  # row 0 left-padded


# ---- presses defined here (the library's own live in retrieval_head.presses)

def ranked(score: torch.Tensor, seen: Seen, count: torch.Tensor) -> torch.Tensor:
    """bool like ``score [b, m, n]``: per row and ``m``, its ``count [b]`` highest real keys
    (``score`` may be ``[b, 1, kv * n]``: one ranking over the row's KV heads)."""
    pads = torch.arange(seen.keys.shape[2], device=score.device) < seen.start[:, None]  # [b, n]
    score = score.masked_fill(pads.repeat(1, score.shape[-1] // pads.shape[1])[:, None], float("-inf"))
    rank = score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return rank < count[:, None, None]


class BasePress:
    name: ClassVar[str] = "test"
    window: ClassVar[int] = 0

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        """Uneven over the layers (mean ``budget``), so each layer's own share is checked."""
        return torch.linspace(0.5 * budget, 1.5 * budget, shape.num_layers).tolist()


@dataclass(frozen=True)
class NormPress(BasePress):
    """Each row keeps its keys of largest |k| over all its KV heads (unequal counts per KV
    head); |k| of the key's first half: under a q/k norm (unit weights) every whole key has
    the same norm, and a ranking of ties would follow float noise."""

    name: ClassVar[str] = "top_norm"

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        b, kv, n, d = seen.keys.shape
        score = seen.keys[..., : d // 2].float().norm(dim=-1).reshape(b, 1, kv * n)
        return ranked(score, seen, seen.totals(share)).reshape(b, kv, n)


@dataclass(frozen=True)
class SnapPress(BasePress):
    """SnapKV-like: each KV head keeps the keys its group's last ``window`` queries attend most."""

    name: ClassVar[str] = "snap_like"
    window: int = 4

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        b, kv, n, d = seen.keys.shape
        q = seen.queries.float().reshape(b, kv, -1, d)  # a KV head's query heads' rows together
        pads = torch.arange(n, device=q.device) < seen.start[:, None]
        s = (q @ seen.keys.float().transpose(-1, -2) * seen.scale).masked_fill(pads[:, None, None], float("-inf"))
        return ranked(s.softmax(-1).sum(-2), seen, seen.totals(share) // kv)


@dataclass(frozen=True)
class SinkRecentPress(BasePress):
    """Streamed KV heads (``streamed [layers, kv]``) keep their row's first ``sink`` and the
    last ``recent`` keys; the others every key: a streaming mask's keep set."""

    streamed: torch.Tensor = None
    sink: int = 4
    recent: int = 8

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        n = seen.keys.shape[2]
        j, first = torch.arange(n)[None, :], seen.start[:, None]
        stream = (j >= first) & ((j < first + self.sink) | (j >= n - self.recent))  # [b, n]
        real = j >= first
        on = self.streamed[seen.layer][None, :, None]
        return torch.where(on, stream[:, None], real[:, None]).expand(-1, seen.keys.shape[1], -1)


@dataclass(frozen=True)
class KeepAll(BasePress):
    name: ClassVar[str] = "keep_all"

    def keep(self, seen: Seen, share: float) -> torch.Tensor:
        real = torch.arange(seen.keys.shape[2]) >= seen.start[:, None]
        return real[:, None].expand(-1, seen.keys.shape[1], -1)


PRESSES = {"norm": NormPress(), "snap": SnapPress()}


# ---- the oracle: eager attention, one full forward per step, the press asked on its tensors

@contextlib.contextmanager
def oracle(model, press, shares: list[float], at: torch.Tensor, start: torch.Tensor):
    name = f"press_oracle_{uuid.uuid4().hex[:6]}"

    def attention(module, query, key, value, attention_mask, **kw):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        b, H, q, _ = query.shape
        kv, T = key.shape[1], key.shape[2]
        assert q == T, "the oracle runs without a cache: every position's query"
        base = torch.zeros(b, 1, q, T) if attention_mask is None else attention_mask[..., -q:, -T:]
        if base.dtype == torch.bool:
            base = torch.zeros(base.shape).masked_fill(~base, float("-inf"))
        scale = kw.get("scaling") or query.shape[-1] ** -0.5
        hidden = torch.zeros(b, H, q, T, dtype=torch.bool)
        for r in range(b):  # one row at a time: a press's choice for a row is the row's alone
            a = int(at[r])
            w = min(press.window, a)
            seen = Seen(module.layer_idx, key[r:r + 1, :, :a], value[r:r + 1, :, :a], query[r:r + 1, :, a - w:a],
                        scale, start[r:r + 1])
            keep = press.keep(seen, shares[module.layer_idx])[0].repeat_interleave(H // kv, dim=0)  # [H, a]
            hidden[r, :, a:, :a] = ~keep[:, None, :]
        kw.pop("sliding_window", None)  # the window is in `base` already (eager's mask)
        return eager(module, query, key, value, base + torch.zeros(b, H, q, T).masked_fill(hidden, float("-inf")),
                     **kw)

    with attention_as(model, name, attention):
        yield


@torch.no_grad()
def greedy(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens ``[b, steps]`` and logits ``[steps, b, vocab]``, one full forward per
    step, positions from the padding as ``generate`` counts them."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    tokens, logits = [], []
    for _ in range(STEPS):
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        step = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        logits.append(step)
        tokens.append(step.argmax(-1))
        ids, mask = torch.cat([ids, tokens[-1][:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(tokens, 1), torch.stack(logits)


def oracle_answer(model, inputs: dict, press=None, phase: str = "decode", at: torch.Tensor | None = None,
                  start: torch.Tensor = START):
    """The oracle's greedy answer under ``press`` at ``BUDGET`` (None: no compression),
    compressed at ``AT[phase]`` (or ``at``)."""
    if press is None:
        return greedy(model, inputs)
    at = AT[phase] if at is None else at
    with oracle(model, press, press.layer_shares(ModelShape.of(model), BUDGET), at, start):
        return greedy(model, inputs)


def batch(vocab: int, seed: int = 0) -> dict:
    """Two rows of LENGTH tokens, row 0 left-padded by PAD tokens (id 0, masked)."""
    ids = torch.randint(1, vocab, (2, LENGTH), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    ids[0, :PAD], mask[0, :PAD] = 0, 0
    return dict(input_ids=ids, attention_mask=mask)


def changed_case(fam, press, phase: str):
    """The first model and prompt of a small grid of seeds whose answer the compression
    changes, with the oracle's answer: (model, inputs, (tokens, logits)). Most take the
    first; a tiny Gemma 2 mostly repeats its last token whatever its decode rows see."""
    for seed in range(3):
        model = build(fam, seed=seed)
        for prompt in range(3):
            inputs = batch(model.get_output_embeddings().weight.shape[0], prompt)
            want = oracle_answer(model, inputs, press, phase)
            if not torch.equal(want[0], oracle_answer(model, inputs)[0]):
                return model, inputs, want
    pytest.fail("the compression changed no answer token on any seed: the comparison would be vacuous")


def assert_same(got, want) -> None:
    assert torch.equal(got[0], want[0]), f"tokens {got[0].tolist()} != the oracle's {want[0].tolist()}"
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-4)
