"""The needle test's streaming conditions on the real head-wise KV cache.

``--keep_full`` conditions stream some heads. The scheduler simulates that with a mask on a
full cache (``HeadMask(mode="stream")``, every key kept, the streamed ones hidden); here a
condition runs on a ``headwise.HeadwiseCache`` instead, which really drops the streamed KV
heads' keys. The cache drops whole KV heads: a KV head serving a kept query head stays full
(``stream.full_kv_heads``) and its streamed query heads are restricted by attention alone,
so any condition gives the simulation's answers here, but only one whose kept set is whole
KV heads (``--unit kv``, or query heads kept or streamed a whole group at a time;
keeping nothing always is) frees the memory of every head it streams. ``--cache``: ``real``
(every streaming condition; refused without one), ``masked`` (the simulation, the
reference), ``auto`` (the default: real where the kept set is whole KV heads, the simulation
for the others, which share its prefill and batches).

Prompts of one length run as one batch (as many rows as the scheduler's budget of cached
tokens holds). A phase-``decode`` condition compresses one plain prefill of the batch,
shared by every such condition (``HeadwiseCache.absorb``: a press on the forward pass's
cache); a phase-``all`` one prefills into its own cache under its rule. Each then
greedy-decodes with ``decode.decode_rows`` (the stop rule and ``max_new_tokens`` of the
masked rows), so it yields the same ``Decoded`` rows; a
``RealDecoded`` also carries the bytes the cache held once the prompt was in it (and
compressed), which the record stores next to ``kv_kept`` (``cache_fields``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Iterator, Protocol

import torch

from ..core.decode import decode_rows, input_device, prefill
from ..core.headwise import HeadwiseCache
from ..core.headwise_attend import HeadwiseAttention
from ..core.intervene import intervene
from ..core.keep import cache_bytes, mixed_heads
from ..core.kvcache import GrowingCache
from ..core.mask import HeadMask
from ..core.stream import full_kv_heads
from ..engine.batching import RowBatcher
from ..engine.progress import Status, count, silent
from ..engine.scheduler import Decoded, Job, Scheduler
from ..errors import UserError
from ..models.shape import ModelShape

log = logging.getLogger(__name__)

from ..vocabulary import CACHE_CHOICES  # noqa: F401,E402 (the choices, re-exported)


class Condition(Protocol):
    """What this module reads of a ``mask.Condition`` (which imports this module: no cycle)."""

    mask: HeadMask | None
    kept: torch.Tensor | None
    unit: str
    folder: str

    def label(self) -> str: ...


@dataclasses.dataclass
class RealDecoded(Decoded):
    """A row decoded on a head-wise cache: ``kv_bytes`` held once the prompt was prefilled
    (``HeadwiseCache.nbytes``), ``kv_bytes_full`` a plain cache's at the same length."""

    kv_bytes: int = 0
    kv_bytes_full: int = 0


def kv_keep(shape: ModelShape, c: Condition) -> torch.Tensor | None:
    """bool ``[layers, kv_heads]``: the keep set of a streaming condition whose kept heads
    are whole KV heads; None when not streaming, or when a KV head serves both kept and
    streamed query heads (the real cache runs it too, ``--cache real``, but frees less than
    it streams: ``--cache auto`` leaves it to the simulation)."""
    if getattr(c.mask, "mode", None) != "stream" or c.kept is None:
        return None
    kept = c.kept.bool()
    if c.unit == "kv":
        return kept
    return None if bool(mixed_heads(shape, kept).any()) else full_kv_heads(shape, kept)


def route(shape: ModelShape, conditions: list[Condition], choice: str) -> list[bool]:
    """Per condition: whether it runs on the real cache under ``--cache choice`` (``real``:
    every streaming condition, refused without one, in one line before the model loads;
    ``auto``: those whose kept set is whole KV heads)."""
    if choice not in CACHE_CHOICES:
        raise UserError(f"--cache must be one of {CACHE_CHOICES}, got {choice!r}")
    if choice == "masked":
        return [False] * len(conditions)
    if choice == "real":
        streaming = [getattr(c.mask, "mode", None) == "stream" and c.kept is not None for c in conditions]
        if not any(streaming):
            raise UserError("--cache real is for streaming conditions: add --keep_full K, or drop --cache")
        return streaming
    return [kv_keep(shape, c) is not None for c in conditions]


def cache_fields(row: Decoded) -> dict:
    """What a streaming record adds: which cache ran it, and for the real one its bytes."""
    if isinstance(row, RealDecoded):
        return {"cache": "real", "kv_bytes": row.kv_bytes, "kv_bytes_full": row.kv_bytes_full}
    return {"cache": "masked"}


def batches(jobs: list[Job], rows_for) -> Iterator[list[Job]]:
    """Jobs of one prompt length, ``rows_for(length)`` at a time (their caches stack unpadded)."""
    by_length: dict[int, list[Job]] = {}
    for job in jobs:
        by_length.setdefault(len(job.prompt.ids), []).append(job)
    for group in by_length.values():
        n = rows_for(len(group[0].prompt.ids))
        for i in range(0, len(group), n):
            yield group[i : i + n]


def decode_real(model, shape: ModelShape, scheduler: Scheduler, jobs: list[Job],
                conditions: list[tuple[int, Condition]], say: Status = silent) -> Iterator[RealDecoded]:
    """Every job under each condition (``(index, c)``: its place in the run) on a head-wise
    cache (its kept set as it is, of KV or query heads: ``HeadwiseCache`` takes both).
    Prompts of one length decode as one batch (rows independent, as in the masked run); the
    phase-decode conditions share one plain prefill of the batch, which each condition's
    cache compresses (``HeadwiseCache.absorb``: what its own prefill holds). ``say`` hears
    each batch's prefill and each condition's decode as they start."""
    n, chunk = scheduler.max_new_tokens, scheduler.levers.prefill_chunk
    itemsize = next(model.parameters()).element_size()
    rows_for = RowBatcher(scheduler.budget or 1, copies=1).rows_for
    done = 0
    for group in batches(jobs, rows_for):
        ids = torch.tensor([job.prompt.ids[:-1] for job in group], device=input_device(model))
        length = ids.shape[1]  # the prompt but its last token, as decode.greedy_decode prefills
        say(f"prefilling prompts {done + 1}-{done + len(group)} of {len(jobs)} together ({length + 1} tokens each)")
        done += len(group)
        t0 = time.perf_counter()
        # Every key of every layer (no config: a sliding layer's window comes from the mask), as absorb needs
        shared = (prefill(model, ids, chunk, cache=GrowingCache(reserve=0))
                  if any(c.mask.phase == "decode" for _, c in conditions) else None)
        shared_s = time.perf_counter() - t0
        full = cache_bytes(shape, None, 1, length, itemsize)
        for index, c in conditions:
            say(f"decoding {count(len(group), 'prompt')} on the head-wise cache of {c.folder}")
            t0, m = time.perf_counter(), c.mask
            cache = HeadwiseCache(shape, c.kept.bool(), m.sink, m.recent, m.phase, reserve=n)
            if m.phase == "decode":
                cache.absorb(shared)
            else:
                with intervene(model, hooks=[HeadwiseAttention()]):
                    prefill(model, ids, chunk, cache=cache)
            held = cache.nbytes() // len(group)  # every row holds as much
            outs = decode_rows(model, [job.prompt.ids[-1] for job in group], length, cache, scheduler.stop, n,
                               hooks=[HeadwiseAttention()])
            seconds = (time.perf_counter() - t0 + shared_s / len(conditions)) / len(group)
            log.debug("real cache %s: %d of %d bytes per row at %d tokens", c.folder, held, full, length)
            for job, out in zip(group, outs):
                yield RealDecoded(job, index, out, None, seconds, kv_bytes=held, kv_bytes_full=full)


def decode_all(model, shape: ModelShape, scheduler: Scheduler, jobs: list[Job], conditions: list[Condition],
               choice: str, say: Status = silent) -> Iterator[Decoded]:
    """Every (job, condition) row: the real-cache conditions here, the others through the
    scheduler (their ``mask`` index mapped back to the condition's); ``say`` hears each
    prefill and decode as it starts (``progress.Progress.say``)."""
    real = route(shape, conditions, choice)
    masked = [i for i, r in enumerate(real) if not r]
    if masked:
        for row in scheduler.run(jobs, masks=[conditions[i].mask for i in masked], say=say):
            yield dataclasses.replace(row, mask=masked[row.mask])
    if any(real):
        yield from decode_real(model, shape, scheduler, jobs, [(i, c) for i, c in enumerate(conditions) if real[i]],
                               say)
