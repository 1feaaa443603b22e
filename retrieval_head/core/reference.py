"""The algorithm on one screen: one detection trial and one masked trial, written plainly.

This is the specification the engine is tested against (tests/test_reference.py): the
scheduler's rows, with prefix reuse and batched decoding, must give exactly these answer
ids and these per-head scores. Nothing here is fast: one prompt, a fresh cache (transformers'
own, keeping every key: positions are indices), one decode step at a time.

A detection trial (Wu et al. 2024): prefill the prompt but its last token; greedy-decode
from the last token under the ``ArgmaxProbe``; at each step, each query head whose most
attended key lies in the needle's span and holds the token just emitted *copies*
(``scoring.RetrievalScorer``). A masked trial: the same greedy answer with heads masked
(``HeadMask``: the prefill under the mask too when its phase is ``all``).

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)).eval()
    >>> trial = detection_trial(model, list(range(20)), (5, 9), torch.zeros(32, dtype=torch.bool), 3)
    >>> len(trial.ids), trial.scores.shape, trial.positions.shape     # positions: [steps, layers, heads]
    (3, torch.Size([2, 2]), torch.Size([3, 2, 2]))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers import DynamicCache

from ..models.shape import ModelShape
from .decode import cache_kwarg, input_device
from .intervene import intervene
from .mask import HeadMask
from .probe import ArgmaxProbe
from .scoring import RetrievalScorer


class Trial(NamedTuple):
    ids: list[int]  # the greedy answer
    scores: torch.Tensor  # float64 [layers, heads]: the retrieval score of each query head
    positions: torch.Tensor  # long [steps, layers, heads]: where each head looked, step by step


@torch.no_grad()
def detection_trial(model, prompt_ids: list[int], span: tuple[int, int], stop: torch.Tensor, max_new_tokens: int,
                    mode: str = "count") -> Trial:
    """One detection trial. span: the needle's answer tokens ``[s, e)`` in ``prompt_ids``;
    stop: bool ``[vocab]``, the tokens that end the answer (kept and scored, as any other)."""
    shape, cache = ModelShape.of(model), DynamicCache()
    kw = {cache_kwarg(model): cache, "use_cache": True}
    ids = torch.tensor([prompt_ids], device=input_device(model))
    model(input_ids=ids[:, :-1], logits_to_keep=1, **kw)  # the prefill: every token but the last
    scorer = RetrievalScorer(prompt_ids, span, shape.num_layers, shape.num_heads, mode)
    probe, token, answer, looked = ArgmaxProbe(), ids[:, -1:], [], []
    with intervene(model, hooks=[probe]):
        for t in range(max_new_tokens):
            emitted = int(model(input_ids=token, **kw).logits[0, -1].argmax())
            where = probe.positions(len(prompt_ids) - 1 + t, shape.num_layers)  # [layers, 1, heads]
            scorer.update(where, emitted)  # the heads that copied ``emitted`` out of the span
            answer.append(emitted)
            looked.append(where[:, 0])
            if emitted < len(stop) and stop[emitted]:
                break
            token = torch.tensor([[emitted]], device=ids.device)
    return Trial(answer, scorer.scores(), torch.stack(looked).cpu())


@torch.no_grad()
def masked_trial(model, prompt_ids: list[int], stop: torch.Tensor, max_new_tokens: int,
                 mask: HeadMask | None) -> list[int]:
    """The greedy answer's ids with ``mask``'s heads masked (None: unmasked)."""
    cache = DynamicCache()
    kw = {cache_kwarg(model): cache, "use_cache": True}
    ids = torch.tensor([prompt_ids], device=input_device(model))
    prefill_length = len(prompt_ids) - 1  # decode-phase streaming compresses these keys once
    hooks = [] if mask is None else [mask.hook(prefill_length)]
    with intervene(model, hooks=hooks if mask is not None and mask.phase == "all" else []):  # the prefill: phase all
        model(input_ids=ids[:, :-1], logits_to_keep=1, **kw)
    token, answer = ids[:, -1:], []
    with intervene(model, hooks=hooks):
        for _ in range(max_new_tokens):
            emitted = int(model(input_ids=token, **kw).logits[0, -1].argmax())
            answer.append(emitted)
            if emitted < len(stop) and stop[emitted]:
                break
            token = torch.tensor([[emitted]], device=ids.device)
    return answer
