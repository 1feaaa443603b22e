"""Greedy decoding as the original: prefill all prompt tokens but the last, then decode
from the last one, so the first answer token is produced (and scored) by a decode step.

Stops after ``max_new_tokens`` or at a stop token, which is kept and scored like any
other: any EOS id (generation config and tokenizer) or any token whose text contains a
newline (not for answers of several lines: ``stop_token_mask(..., newline=False)``). Both
sets come from the tokenizer and config, never literal ids.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..models.shape import ModelShape
from .hook import Hook
from .intervene import intervene
from .kvcache import GrowingCache
from .mask import HeadMask
from .probe import ArgmaxProbe


@dataclass
class Generation:
    ids: list[int]
    text: str


def stop_token_mask(model, tokenizer, newline: bool = True) -> torch.Tensor:
    """bool[vocab]: EOS ids and (``newline``, the default) every token whose decoded text
    contains a newline; answers of several lines stop at EOS only."""
    vocab = max(len(tokenizer), model.get_output_embeddings().weight.shape[0])
    stop = torch.zeros(vocab, dtype=torch.bool)
    if newline:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        stop[: len(texts)] = torch.tensor(["\n" in t for t in texts])
    eos = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        e = getattr(src, "eos_token_id", None)
        eos.update(e if isinstance(e, (list, tuple)) else ([e] if e is not None else []))
    for e in eos:
        if 0 <= e < vocab:
            stop[e] = True
    return stop


def cache_kwarg(model) -> str:
    """The forward's cache keyword: ``cache`` (transformers 5.24 renamed ``past_key_values``;
    every model of the supported range takes it, and 5.25 warns on the old name), or
    ``past_key_values`` for a model whose forward names only that (remote code).

    >>> class Old:
    ...     def forward(self, input_ids, past_key_values=None): ...
    >>> class Wrapped:  # a forward that hides its parameters still takes the current name
    ...     def forward(self, *args, **kwargs): ...
    >>> cache_kwarg(Old()), cache_kwarg(Wrapped())
    ('past_key_values', 'cache')
    """
    params = inspect.signature(model.forward).parameters
    return "past_key_values" if "past_key_values" in params and "cache" not in params else "cache"


def input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def check_supported(model) -> None:
    """Refuse, by class name, a model whose attention does not reach the interface.

    Runs two dummy tokens and one decode step under a probe: cheap, and done before any
    output is written.
    """
    ids = torch.zeros(1, 3, dtype=torch.long, device=input_device(model))
    probe = ArgmaxProbe()
    with intervene(model, probe=probe) as scope:
        cache = prefill(model, ids[:, :2])
        model(input_ids=ids[:, 2:], use_cache=True, **{cache_kwarg(model): cache})
    scope.check_routed()
    probe.positions(2, ModelShape.from_config(model.config).num_layers)


@torch.no_grad()
def prefill(model, ids: torch.Tensor, chunk: int | None = None, cache=None, reserve: int = 64):
    """Run ``ids`` [b, n] (rows of one length) through the model into ``cache`` (a new ``GrowingCache`` with
    ``reserve`` spare tokens if None); no logits kept."""
    cache = GrowingCache(model.config, reserve=reserve) if cache is None else cache
    if isinstance(cache, GrowingCache):
        cache.expect(cache.get_seq_length() + ids.shape[1])  # one allocation, however many chunks
    key = cache_kwarg(model)
    step = chunk or ids.shape[1]
    for i in range(0, ids.shape[1], step):
        model(input_ids=ids[:, i : i + step], use_cache=True, logits_to_keep=1, **{key: cache})
    return cache


@torch.no_grad()
def decode_rows(model, last_ids: list[int], query_position: int, cache, stop_mask: torch.Tensor,
                max_new_tokens: int, probe: ArgmaxProbe | None = None, mask: HeadMask | None = None,
                on_step: Callable[[int, int, int, torch.Tensor | None], None] | None = None,
                hooks: Sequence[Hook] = ()) -> list[list[int]]:
    """Greedy-decode the rows of ``cache`` (each holds its prompt but the last token) as one batch.

    Row i continues from ``last_ids[i]``; every row's last prompt token sits at
    ``query_position`` (equal prompt lengths, so no padding). ``on_step(row, t, token,
    positions)`` runs for each new token of a row, ``positions`` being the probe's
    ``[layers, heads]`` argmax positions for that row (None without a probe). A row that
    stopped keeps stepping with the others (its tokens are dropped) until all have stopped.
    Rows are independent: row i decodes as it would alone (the same greedy tokens and argmax
    positions; logits can differ in the last float bits, as any change of batch size can).
    ``hooks``: more hooks in the decode's scope, first (a head-wise cache's attention).
    """
    n, dev, key = len(last_ids), input_device(model), cache_kwarg(model)
    num_layers = ModelShape.from_config(model.config).num_layers
    inp = torch.tensor(last_ids, device=dev)[:, None]
    outs: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    # the mask first: the probe sees the query it leaves; rows' prompts were prefilled up to query_position
    hooks = [*hooks] + [h for h in (mask.hook(query_position) if mask is not None else None, probe) if h is not None]
    with intervene(model, hooks=hooks) as scope:
        for t in range(max_new_tokens):
            if probe is not None:
                probe.clear()
            tokens = model(input_ids=inp, use_cache=True, **{key: cache}).logits[:, -1].argmax(-1)
            if t == 0:
                scope.check_routed()
            pos = probe.positions(query_position + t, num_layers) if probe is not None else None
            for i, tok in enumerate(tokens.tolist()):
                if done[i]:
                    continue
                outs[i].append(tok)
                if on_step is not None:
                    on_step(i, t, tok, pos[:, i : i + 1] if pos is not None else None)
                done[i] = tok < len(stop_mask) and bool(stop_mask[tok])
            if all(done):
                break
            inp = tokens[:, None]
    return outs


@torch.no_grad()
def greedy_decode(
    model,
    tokenizer,
    prompt_ids: list[int],
    stop_mask: torch.Tensor,
    max_new_tokens: int = 50,
    probe: ArgmaxProbe | None = None,
    mask: HeadMask | None = None,
    on_step: Callable[[int, int, torch.Tensor | None], None] | None = None,
    prefill_chunk: int | None = None,
    cache=None,
) -> Generation:
    """Greedy answer to ``prompt_ids``; ``on_step(t, token, positions)`` after each step.

    ``positions`` is the probe's ``[layers, 1, heads]`` absolute argmax positions of the query
    that produced ``token`` (None without a probe). ``cache``, when given, already holds
    ``prompt_ids[:-1]`` (a shared prefill); it is extended in place.
    """
    if cache is None:
        ids = torch.tensor([prompt_ids[:-1]], device=input_device(model))
        # Streaming reads absolute key positions: every layer keeps every key (a sliding layer's
        # window from the mask), as the scheduler's caches do; otherwise sliding layers keep their window
        every_key = mask is not None and mask.mode == "stream"
        cache = GrowingCache(reserve=max_new_tokens) if every_key else None
        if mask is not None and mask.phase == "all":
            with intervene(model, mask=mask):
                cache = prefill(model, ids, prefill_chunk, cache=cache, reserve=max_new_tokens)
        else:  # outside any scope: a prefill chunk of one token must not count as a decode step
            cache = prefill(model, ids, prefill_chunk, cache=cache, reserve=max_new_tokens)
    step = None if on_step is None else (lambda row, t, tok, pos: on_step(t, tok, pos))
    out = decode_rows(model, [prompt_ids[-1]], len(prompt_ids) - 1, cache, stop_mask, max_new_tokens,
                      probe=probe, mask=mask, on_step=step)[0]
    return Generation(out, tokenizer.decode(out, skip_special_tokens=True).strip())


def row_masks(shape: ModelShape, masks: list[HeadMask | None]) -> HeadMask:
    """One decode-phase ``HeadMask`` with a ``[rows, layers, heads]`` row per mask (None = no mask)."""
    real = [m for m in masks if m is not None]
    if any(m.phase != "decode" or m.kind() != real[0].kind() for m in real):
        raise ValueError("batched conditions need decode-phase masks of one kind (mode, sink, recent)")
    heads = torch.stack([m.heads if m is not None else torch.zeros(shape.grid, dtype=torch.bool) for m in masks])
    if not real:
        return HeadMask(heads)
    return HeadMask(heads, real[0].mode, "decode", real[0].sink, real[0].recent)
