"""Induction and echo scores: one forward pass over repeated random tokens, no haystack.

A seeded sequence of ``period`` distinct random tokens (drawn from the tokenizer's
vocabulary without its special tokens) is repeated ``repeats`` times (after the BOS token
where the tokenizer adds one). At every position ``p`` of repeats 2..n the current token
occurred last at ``p - period``:

- ``induction`` (Olsson et al. 2022, arXiv 2209.11895; RazorAttention, Tang et al. 2024,
  arXiv 2407.15891; TransformerLens ``detect_head(..., "induction")``): the head's softmax
  mass on ``p - period + 1``, the token that *followed* the previous occurrence;
- ``echo`` (RazorAttention's echo heads, TransformerLens's "duplicate token"): its mass on
  ``p - period``, the previous occurrence itself.

Each score is averaged over those positions, per sequence; several seeds are the "trials"
of the ``{"layer-head": [score per seed]}`` file. Computed by ``tap.AttentionTap`` in the
pass (no attention matrix kept): seconds on a CPU.

Worked example, period 3, repeats 2, no BOS: tokens ``[a b c a b c]``; position 3 (``a``)
-> induction key 1 (``b``), echo key 0 (``a``); a head attending from each position of the
second repeat to the token after its previous occurrence scores induction 1, echo 0::

    >>> rows, ind, echo = repeat_rows(period=3, repeats=2, offset=0)
    >>> rows.tolist(), ind.tolist(), echo.tolist()
    ([3, 4, 5], [1, 2, 3], [0, 1, 2])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch

from ..core.decode import input_device
from ..core.intervene import intervene
from ..core.tap import AttentionTap
from ..errors import UserError
from ..models.shape import ModelShape

# The keys of the two methods of the pass (``induction.Induction`` and ``induction.Echo``:
# ``p - period + key``), read when no ``keys`` are given; tests hold them equal to the
# registry's (``registry.repeat_keys``), which the command passes.
KEYS: Mapping[str, int] = MappingProxyType({"induction": 1, "echo": 0})


@dataclass(frozen=True)
class RepeatSettings:
    period: int = 256
    repeats: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)

    def check(self) -> None:
        if self.period < 2 or self.repeats < 2 or not self.seeds:
            raise UserError("--repeat_period must be >= 2, --repeat_count >= 2 and --repeat_seeds not empty")


def check_fits(shape: ModelShape, st: RepeatSettings) -> None:
    """Refuse, before any weight loads, repeats longer than the model's positions (BOS counted)."""
    n = 1 + st.period * st.repeats
    if shape.max_positions is not None and n > shape.max_positions:
        raise UserError(f"{st.repeats} x {st.period} repeated tokens (+ BOS) exceed the model's {shape.max_positions} "
                        "positions; lower --repeat_period or --repeat_count")


def repeat_rows(period: int, repeats: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query positions of repeats 2..n and their induction and echo keys."""
    rows = torch.arange(offset + period, offset + period * repeats)
    return rows, rows - period + 1, rows - period


def token_pool(tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids the random sequences use: the tokenizer's, without special tokens, below
    the model's embedding size."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(min(len(tokenizer), vocab_size)) if i not in special])


def repeated_tokens(tokenizer, vocab_size: int, st: RepeatSettings) -> tuple[torch.Tensor, int]:
    """``[seeds, offset + period * repeats]`` ids (one row per seed) and the offset (1 with BOS)."""
    pool = token_pool(tokenizer, vocab_size)
    if len(pool) < st.period:
        raise UserError(f"--repeat_period {st.period} needs that many distinct tokens; the vocabulary has "
                        f"{len(pool)} (without special tokens)")
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and probe and probe[0] == bos else []
    rows = []
    for seed in st.seeds:
        g = torch.Generator().manual_seed(seed)
        seq = pool[torch.randperm(len(pool), generator=g)[: st.period]]
        rows.append(torch.cat([torch.tensor(prefix, dtype=torch.long), seq.repeat(st.repeats)]))
    return torch.stack(rows), len(prefix)


@torch.no_grad()
def repeat_scores(model, tokenizer, st: RepeatSettings = RepeatSettings(),
                  keys: Mapping[str, int] = KEYS) -> dict:
    """``{"induction": [seeds, layers, heads], "echo": ..., "seconds", "tap_seconds"}`` (float64):
    for each method of ``keys`` (name -> key; the command passes every registered repeat
    method's, ``registry.repeat_keys``), each head's mass on key ``p - period + key``."""
    st.check()
    shape = ModelShape.of(model)
    t0 = time.perf_counter()
    check_fits(shape, st)
    ids, offset = repeated_tokens(tokenizer, model.get_input_embeddings().weight.shape[0], st)
    rows, _, _ = repeat_rows(st.period, st.repeats, offset)
    targets = torch.stack([rows - st.period + k for k in keys.values()], 1)  # one softmax per row, a key per method
    tap = AttentionTap(rows, targets, targets + 1)
    with intervene(model, tap=tap) as scope:
        model(input_ids=ids.to(input_device(model)), use_cache=False, logits_to_keep=1)
    scope.check_routed()
    mass = tap.mean(shape.num_layers).transpose(0, 1)  # [seeds, layers, heads, keys]
    out = {name: mass[..., i] for i, name in enumerate(keys)}
    out.update(seconds=time.perf_counter() - t0, tap_seconds=tap.seconds)
    return out


def head_counter(scores: torch.Tensor) -> dict[str, list[float]]:
    """``[seeds, layers, heads]`` -> the original's ``{"layer-head": [score per seed]}``.

    >>> head_counter(torch.tensor([[[1.0, 0.0]], [[0.5, 0.25]]]))
    {'0-0': [1.0, 0.5], '0-1': [0.0, 0.25]}
    """
    _, layers, heads = scores.shape
    return {f"{l}-{h}": scores[:, l, h].tolist() for l in range(layers) for h in range(heads)}
