"""Greedy decoding as the original: prefill all prompt tokens but the last, then decode
from the last one, so the first answer token is produced (and scored) by a decode step.

Stops after ``max_new_tokens`` or at a stop token, which is kept and scored like any
other: any EOS id (generation config and tokenizer) or any token whose text contains a
newline. Both sets come from the tokenizer and config, never literal ids.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from .attention import ArgmaxProbe, HeadMask, intervene


@dataclass
class Generation:
    ids: list[int]
    text: str


def stop_token_mask(model, tokenizer) -> torch.Tensor:
    """bool[vocab]: EOS ids and every token whose decoded text contains a newline."""
    vocab = max(len(tokenizer), model.get_output_embeddings().weight.shape[0])
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    stop = torch.zeros(vocab, dtype=torch.bool)
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
    """transformers 5.x renamed ``past_key_values`` to ``cache``; use what forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
    probe.positions(2, model.config.num_hidden_layers)


@torch.no_grad()
def prefill(model, ids: torch.Tensor, chunk: int | None = None, cache=None):
    """Run ``ids`` [1, n] through the model into ``cache`` (new if None); no logits kept."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    key = cache_kwarg(model)
    step = chunk or ids.shape[1]
    for i in range(0, ids.shape[1], step):
        model(input_ids=ids[:, i : i + step], use_cache=True, logits_to_keep=1, **{key: cache})
    return cache


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

    ``positions`` is the probe's ``[layers, 1, heads]`` absolute argmax positions of the
    query that produced ``token`` (None without a probe). ``cache``, when given, already
    holds ``prompt_ids[:-1]`` (a shared prefill); it is extended in place.
    """
    dev = input_device(model)
    ids = torch.tensor([prompt_ids], device=dev)
    key = cache_kwarg(model)
    num_layers = model.config.num_hidden_layers
    out_ids: list[int] = []
    if cache is None and not (mask is not None and mask.phase == "all"):
        # Outside the scope: a prefill chunk of one token must not count as a decode step.
        cache = prefill(model, ids[:, :-1], prefill_chunk)
    ctx = intervene(model, probe=probe, mask=mask) if (probe or mask) else contextlib.nullcontext()
    with ctx as scope:
        if cache is None:
            cache = prefill(model, ids[:, :-1], prefill_chunk)
        inp, pos = ids[:, -1:], len(prompt_ids) - 1
        for t in range(max_new_tokens):
            if probe is not None:
                probe.clear()
            logits = model(input_ids=inp, use_cache=True, **{key: cache}).logits[0, -1]
            if scope is not None and t == 0:
                scope.check_routed()
            token = int(logits.argmax())
            out_ids.append(token)
            if on_step is not None:
                on_step(t, token, probe.positions(pos, num_layers) if probe is not None else None)
            if token < len(stop_mask) and stop_mask[token]:
                break
            inp, pos = torch.tensor([[token]], device=dev), pos + 1
    return Generation(out_ids, tokenizer.decode(out_ids, skip_special_tokens=True).strip())


@torch.no_grad()
def greedy_decode_batch(model, tokenizer, prompt_ids: list[int], stop_mask: torch.Tensor, max_new_tokens: int,
                        masks: list[HeadMask | None], cache) -> list[Generation]:
    """Several decode-phase masks (None = no mask) decoded from one prefill as one batch.

    ``cache`` holds ``prompt_ids[:-1]`` and is expanded to the batch in place (its last
    user). Row i is what ``greedy_decode(..., mask=masks[i])`` gives; a row that stopped
    keeps stepping (its tokens are dropped) until every row has stopped.
    """
    real = [m for m in masks if m is not None]
    if any(m.phase != "decode" or m.mode != real[0].mode for m in real):
        raise ValueError("batched conditions need decode-phase masks of one mode")
    num_layers, num_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    heads = torch.stack([m.heads if m is not None else torch.zeros(num_layers, num_heads, dtype=torch.bool)
                         for m in masks])
    n, dev, key = len(masks), input_device(model), cache_kwarg(model)
    cache.batch_repeat_interleave(n)
    inp = torch.full((n, 1), prompt_ids[-1], device=dev)
    outs, done = [[] for _ in masks], [False] * n
    with intervene(model, mask=HeadMask(heads, real[0].mode if real else "uniform", "decode")) as scope:
        for t in range(max_new_tokens):
            tokens = model(input_ids=inp, use_cache=True, **{key: cache}).logits[:, -1].argmax(-1)
            if t == 0:
                scope.check_routed()
            for i, tok in enumerate(tokens.tolist()):
                if not done[i]:
                    outs[i].append(tok)
                    done[i] = tok < len(stop_mask) and bool(stop_mask[tok])
            if all(done):
                break
            inp = tokens[:, None]
    return [Generation(o, tokenizer.decode(o, skip_special_tokens=True).strip()) for o in outs]
