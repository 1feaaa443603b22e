"""Press conditions in the scheduler: each prompt's keep sets, chosen once from its shared plain
prefill, and the hook that decodes rows of several prompts and presses as one batch.

A press condition (``core.mask.PressMask``, phase decode) compresses the prompt's cache once,
at the prompt's length ``L``, as kvpress's presses do (``core.pressing``): the whole prompt is
in the cache, the first answer token comes from the full cache, every later one from the kept
keys. Its press must see, in every layer, every key before ``L`` and the queries of the last
``press.window`` positions. The scheduler's prefill runs outside any scope, is partly reused
from the last prompt, and holds the prompt's first ``L - 1`` tokens (its last token is
decoded as the first step). So ``choose_keep`` crops that cache back to ``L - w`` (``w``: the
largest window of the pass's presses, at least 1) and runs the prompt's last ``w`` tokens on
it inside one scope that holds a ``PressHeads`` per press condition: each layer's call covers
position ``L - 1``, so every press sees the keys ``0 .. L-1`` and its window of queries, and
stores its keep sets. Those rows lie before ``L``: they see every key and the re-run changes
nothing but recomputing the last ``w - 1`` keys, as a prefix reuse would. The cache is then
cropped back to ``L - 1`` tokens and shared by every condition of the prompt: one plain
prefill per prompt, plus ``w`` tokens for all its presses together.

The decode then runs every row under ``kept_hook``: a ``KeptKeys`` holding, per layer, each
row's keep set (all keys for a row without a press), so rows of several prompts (of one
length) and presses decode as one batch, each as ``intervene(model, hooks=[PressHeads(...)])``
around its own generate would (``tests/test_schedule_press.py``).

A phase-``context`` press compresses the context once, at its end ``C`` (the prompt's
``context_end``), and the question after it runs on the compressed context: its keys differ
per press. ``context_row`` therefore gives each such condition the shared cache in turn: it
keeps the plain keys from ``C - w`` on, crops the cache there, re-runs the prompt from
``C - w`` inside the press's scope (the press sees the context's keys and its window of
queries; the question's rows see the kept keys), decodes the row on that cache alone, then
puts the plain keys back: one plain prefill per prompt still, plus ``w`` + the question's
tokens per context press, whose rows decode one at a time.
"""

from __future__ import annotations

import torch

from ..core.decode import decode_rows, input_device, prefill
from ..core.intervene import intervene
from ..core.mask import PressMask
from ..core.pressing import KeptKeys
from ..models.shape import ModelShape

Kept = dict[int, torch.Tensor]  # layer -> bool [1, kv_heads, L]: one row's keep set


def window(presses: dict[int, PressMask]) -> int:
    """The prompt tokens ``choose_keep`` re-runs: the largest window, at least the last token."""
    return max([1] + [m.press.window for m in presses.values()])


@torch.no_grad()
def choose_keep(model, shape: ModelShape, cache, ids: list[int], presses: dict[int, PressMask],
                chunk: int | None = None) -> dict[int, Kept]:
    """Each press condition's keep sets for the prompt ``ids`` (by its index in the run), from
    ``cache``, which holds ``ids[:-1]`` (the scheduler's plain prefill) and holds them again on
    return (see the module's docstring)."""
    if any(m.phase != "decode" for m in presses.values()):
        raise ValueError("a press compressing the context (phase context) needs its own prefill of the question "
                         "per press; the scheduler runs phase decode only")
    length = len(ids)
    w = min(window(presses), length)
    held = cache.get_seq_length()
    if held != length - 1:
        raise ValueError(f"the cache holds {held} tokens, not the prompt's {length} but its last")
    if held > length - w:
        cache.crop(-(held - (length - w)))
    hooks = {i: m.hook(shape, length) for i, m in presses.items()}
    with intervene(model, hooks=list(hooks.values())):
        prefill(model, torch.tensor([ids[length - w:]], device=input_device(model)), chunk, cache=cache)
    cache.crop(-1)  # back to ids[:-1]: the last token is the first decode step
    return {i: h.kept for i, h in hooks.items()}


@torch.no_grad()
def context_row(model, shape: ModelShape, cache, ids: list[int], context_end: int, mask: PressMask,
                stop: torch.Tensor, max_new_tokens: int, chunk: int | None = None) -> tuple[list[int], Kept]:
    """The answer of the prompt ``ids`` under a phase-context press, and its keep sets, from
    ``cache`` (holding ``ids[:-1]``, as it does again on return; see the module's docstring)."""
    length, at = len(ids), context_end
    if at is None or not 0 < at < length:
        raise ValueError(f"a context-phase press needs the prompt's context end inside it, got {at} of {length}")
    start = at - min(max(1, mask.press.window), at)
    plain = [(layer.keys[..., start:, :].clone(), layer.values[..., start:, :].clone()) for layer in cache.layers]
    cache.crop(-(cache.get_seq_length() - start))
    hook = mask.hook(shape, at)
    with intervene(model, hooks=[hook]):
        prefill(model, torch.tensor([ids[start:-1]], device=input_device(model)), chunk, cache=cache)
    out = decode_rows(model, [ids[-1]], length - 1, cache, stop, max_new_tokens, hooks=[hook])[0]
    cache.crop(-(cache.get_seq_length() - start))
    for layer, (k, v) in zip(cache.layers, plain):
        layer.update(k, v)  # the plain keys back, for the prompt's other conditions
    return out, hook.kept


def kept_keys(kept: Kept, at: int) -> int:
    """The keys a row's keep sets hold before ``at``, over every layer and KV head."""
    return int(sum(int(k[..., :at].sum()) for k in kept.values()))


def kept_hook(rows: list[Kept | None], at: int, shape: ModelShape) -> KeptKeys:
    """One hook for a batch: row i sees from ``at`` on the keys ``rows[i]`` keeps (every key
    where it is None: a condition without a press)."""
    first = next(k for k in rows if k is not None)
    device = first[0].device
    every = torch.ones(1, shape.num_kv_heads, at, dtype=torch.bool, device=device)
    stacked = {layer: torch.cat([every if k is None else k[layer][..., :at] for k in rows])
               for layer in range(shape.num_layers)}
    return KeptKeys(stacked, at)
