"""The speed levers beneath both experiments, behind one typed interface.

The experiments say *what* to decode: ``Job``s (a prompt each) under a list of head masks
(one row per mask; ``None`` = unmasked), and what to read on the way (``reads``: the argmax
probe, a prefill tap... as the head-identification methods ask, ``engine.reads``). The
``Scheduler`` decides *how*, and yields one ``Decoded`` row at a time, each exactly what
``decode.greedy_decode(model, tok, job.prompt.ids, stop, n, mask=masks[i], probe=...)``
would give for it (tests/test_prefix.py, tests/test_batched.py):

- **prefix reuse** (``prefix.SharedPrefix``): prompts run in ascending insertion order,
  each prefilling only what follows the prefix it shares with the last one;
- **one prefill per prompt** for all decode-phase masks; a phase-``all`` mask changes the
  prefill, so it gets its own pass over the prompts (its prefill under the mask);
- **press conditions** (``PressMask``) join the first decode pass: they share its plain
  prefill; in phase decode each prompt's presses all see its keys and their window of queries
  in one re-run of its last ``w`` tokens (``pressed.choose_keep``: ``w`` the largest window),
  before its rows decode with the others, each under its own keep sets
  (``pressed.kept_hook``); in phase context each press re-runs the prompt from its window
  before the context's end and decodes its row alone on the shared cache, which then gets its
  plain keys back (``pressed.context_row``);
- **real-cache conditions** (``realrows.RealCache``: the cache as a lever) decode on a cache
  that really drops keys, which their factory builds: in phase decode they join the first
  decode pass, each batch's plain prefill (prefix reused) stacked once and compressed per
  condition, each condition's rows a batch of their own on its cache (a press on the real
  pressed cache, ``realrows.RealPress``: a cache per row); in phase all each gets a pass of
  its own, its batches prefilled under its rule into a fresh cache (no prefix reuse: a
  compressed cache cannot be cropped back);
- **batched decoding** (``batching.RowBatcher``): prompts of one length decode together,
  a row per (prompt, mask), while their caches hold at most ``batch_tokens`` tokens; a
  prompt whose rows alone exceed the budget decodes them in chunks that fit, from its one
  prefill (one row at a time decodes on the prefilled cache itself, no copy);
- **the in-place cache** (``kvcache.GrowingCache``): every cache keeps every key (sliding
  layers get their window from the mask), so it can be cropped back and stacked.

    scheduler = Scheduler(model, shape, stop, max_new_tokens=50, levers=Levers())
    for row in scheduler.run(jobs, masks=[None], reads=[ArgmaxRead()]):   # or probe=True
        row.job, row.ids, row.positions          # positions: [steps, layers, heads]
        row.reads                                # each read's result, by its name
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

import torch

from ..core.decode import decode_rows, row_masks
from ..core.intervene import intervene
from ..core.kvcache import snapshot, stack_rows
from ..core.mask import HeadMask, PressMask
from ..inputs.prompt import Prompt
from ..models.shape import ModelShape
from .batching import Row, RowBatcher, auto_budget
from .prefix import FreshPrefix, SharedPrefix
from .pressed import Kept, choose_keep, context_row, kept_hook, kept_keys, window
from .progress import Status, count, silent
from .reads import DECODE, PREFILL, ArgmaxRead, Read, Reading
from .realrows import REAL, RealCache, RealPress, decode_on, row_of

log = logging.getLogger(__name__)

Mask = HeadMask | PressMask | RealCache | RealPress | None  # what a row runs under (None: unmasked)


@dataclass(frozen=True)
class Job:
    """One prompt to decode. ``source``: prompts of one source (a haystack) share prefixes."""

    key: Hashable
    prompt: Prompt
    source: str = ""


@dataclass
class Decoded:
    """One (job, mask) row, decoded.

    mask: the index of its mask in the ``masks`` given to ``run``.
    positions: the probe's absolute argmax positions, ``[steps, layers, heads]`` (None without it):
    ``reads["positions"]``, the ``ArgmaxRead``'s result.
    seconds: the row's share of its prompt's prefill and of its batch's decode.
    reads: each read's result for the row, by the read's name (``run(reads=...)``, ``engine.reads``).
    kept_keys: a press row's keys kept at its compression point, over every layer and KV head.
    kv_bytes, kv_bytes_full: a real-cache row's (``realrows``) bytes its cache held once the
    prompt was in it (compressed), and a plain cache's at the same length.
    """

    job: Job
    mask: int
    ids: list[int]
    positions: torch.Tensor | None
    seconds: float
    reads: dict[str, Any] = field(default_factory=dict)
    kept_keys: int | None = None
    kv_bytes: int | None = None
    kv_bytes_full: int | None = None

    def __post_init__(self):
        if self.positions is None:
            self.positions = self.reads.get(ArgmaxRead.name)


@dataclass(frozen=True)
class Levers:
    prefix_reuse: bool = True
    batch_tokens: int | None = None  # None: batching.auto_budget; 0: one row at a time
    prefill_chunk: int | None = None


@dataclass
class _Pass:
    """Masks that share one prefill of each prompt: ``prefill_mask`` is None (decode-phase
    masks, one mode, presses and phase-decode real caches) or the single phase-``all`` mask
    (or real cache) of the pass."""

    masks: list[Mask]
    index: list[int]
    prefill_mask: HeadMask | RealCache | None = None


def passes(masks: list[Mask]) -> list[_Pass]:
    """Decode-phase masks of one kind (mode, sink, recent), None and presses share a prefill;
    a phase-all mask prefills alone.

    >>> on = torch.ones(1, 1, dtype=torch.bool)
    >>> [p.index for p in passes([None, HeadMask(on), HeadMask(on, phase="all"), HeadMask(on, "zero")])]
    [[0, 1], [3], [2]]
    """
    decode = [i for i, m in enumerate(masks) if m is None or m.phase != "all"]
    kind = lambda m: m.kind() if isinstance(m, HeadMask) else None  # noqa: E731
    kinds = list(dict.fromkeys(kind(masks[i]) for i in decode if isinstance(masks[i], HeadMask))) or [None]
    out = []
    for k in kinds:  # unmasked rows and presses join the first kind's pass
        idx = [i for i in decode if (kind(masks[i]) if isinstance(masks[i], HeadMask) else kinds[0]) == k]
        out.append(_Pass([masks[i] for i in idx], idx))
    out += [_Pass([m], [i], prefill_mask=m) for i, m in enumerate(masks) if m is not None and m.phase == "all"]
    return [p for p in out if p.masks]


class Scheduler:
    def __init__(self, model, shape: ModelShape, stop: torch.Tensor, max_new_tokens: int, levers: Levers = Levers()):
        self.model, self.shape, self.stop, self.max_new_tokens, self.levers = model, shape, stop, max_new_tokens, levers
        self.budget = levers.batch_tokens if levers.batch_tokens is not None else auto_budget(model, shape)
        self.stats: dict = {"prefix_reuse": levers.prefix_reuse, "batch_tokens": self.budget, "prompt_tokens": 0,
                            "prefilled_tokens": 0, "decode_batches": []}
        self._reused_tokens = 0
        self._reads: tuple[Read, ...] = ()
        self._prefilled: dict[int, dict[str, Any]] = {}  # id(job) -> its prefill reads' results
        self._say: Status = silent
        self._kept: dict[int, dict[int, Kept]] = {}  # id(job) -> its press conditions' keep sets, by mask index

    def run(self, jobs: list[Job], masks: list[Mask] = (None,), reads: Sequence[Read] = (),
            say: Status | None = None, probe: bool = False) -> Iterator[Decoded]:
        """Every (job, mask) row, as its batch finishes.

        reads: what to read on the way (``engine.reads``): a prefill read's hook sees each
        prompt's prefill (its rows always prefilled, not reused), a decode read's each decode
        batch; each row gets their results in ``Decoded.reads``. probe: short for
        ``reads=[ArgmaxRead()]`` (the argmax positions, ``Decoded.positions``); say: told
        each prefill and decode batch as it starts (``progress.Progress.say``, which
        shows those before the first row: batching holds the first rows until several
        prompts are prefilled)."""
        masks = list(masks)
        presses = [m for m in masks if isinstance(m, PressMask)]
        reads = tuple(reads) + ((ArgmaxRead(),) if probe and not any(r.name == ArgmaxRead.name for r in reads) else ())
        if presses and reads:
            raise ValueError("press conditions run without the probe and the methods' reads (detection's)")
        if any(isinstance(m, REAL) for m in masks) and reads:
            raise ValueError("real-cache conditions run without the probe and the methods' reads (detection's)")
        self._reads, self._prefilled = reads, {}
        self._say = say or silent
        if self.levers.prefix_reuse:  # ascending insertion points: each prompt extends the last one's prefix
            jobs = sorted(jobs, key=lambda j: (j.source, j.prompt.insert_at, j.key))
        for p in passes(masks):
            yield from self._pass(jobs, p)
        log.info("prefilled %d of %d prompt tokens; %d decode batches", self.stats["prefilled_tokens"],
                 self.stats["prompt_tokens"], len(self.stats["decode_batches"]))

    def _pass(self, jobs: list[Job], p: _Pass) -> Iterator[Decoded]:
        if isinstance(p.prefill_mask, RealCache):
            yield from self._fresh(jobs, p.index[0], p.prefill_mask)
            return
        context = {i: m for i, m in zip(p.index, p.masks) if isinstance(m, PressMask) and m.phase == "context"}
        real = {i: m for i, m in zip(p.index, p.masks) if isinstance(m, REAL)}  # on caches of their own
        if context or real:  # context: one at a time on the shared cache (pressed.context_row); the others batched
            rest = [k for k, i in enumerate(p.index) if i not in context and i not in real]
            p = _Pass([p.masks[k] for k in rest], [p.index[k] for k in rest], p.prefill_mask)
        lv, reserve, copies = self.levers, self.max_new_tokens, len(p.masks)
        held = copies + bool(real)  # a batch's caches: a copy per masked condition, the real ones' stacked plain one
        shares = copies + len(real)  # the rows that share each prompt's prefill
        source = (SharedPrefix if lv.prefix_reuse else FreshPrefix)(self.model, chunk=lv.prefill_chunk, reserve=reserve)
        batcher: RowBatcher[Job] = RowBatcher(self.budget, copies=max(held, 1))
        presses = {i: m for i, m in zip(p.index, p.masks) if isinstance(m, PressMask)}
        for k, job in enumerate(jobs, 1):
            self._say(f"prefilling prompt {k} of {len(jobs)} ({len(job.prompt.ids)} tokens)")
            t0 = time.perf_counter()
            taps = self._open(PREFILL, [job.prompt])
            # Outside any scope for decode-phase masks: a one-token prefill chunk is no decode step
            # (inside a tap's scope it is none either: no probe, so the backend computes it).
            scoped = p.prefill_mask is not None or bool(taps)
            first = min((r.first_row for r in taps.values() if r.first_row is not None), default=None)
            with intervene(self.model, mask=p.prefill_mask, hooks=[r.hook for r in taps.values()]) if scoped \
                    else contextlib.nullcontext():
                cache = source.cache_for(job.prompt.ids, first)
            if presses:  # every press of the pass sees the prompt's keys and its window of queries
                self._kept[id(job)] = choose_keep(self.model, self.shape, cache, job.prompt.ids, presses,
                                                  lv.prefill_chunk)
                self.stats["press_tokens"] = self.stats.get("press_tokens", 0) + min(window(presses),
                                                                                     len(job.prompt.ids))
            if taps:
                self._prefilled[id(job)] = {name: r.result(0) for name, r in taps.items()}
                self._count(taps)
            row = Row(job, len(job.prompt.ids), None, time.perf_counter() - t0)
            self.stats["prompt_tokens"] += row.length - 1
            yield from self._in_context(job, cache, context)
            if not held:
                continue
            if held * row.length > self.budget or (held == 1 and batcher.rows_for(row.length) == 1):
                yield from self._real([row], cache, real, shares)
                yield from self._on_its_own(row, cache, p)
                self._kept.pop(id(job), None)
                continue
            row.snapshot = snapshot(cache)
            for group in batcher.add(row):
                yield from self._group(group, real, shares, p)
        for group in batcher.flush():
            yield from self._group(group, real, shares, p)
        self._reused_tokens += source.reused_tokens
        self.stats["prefilled_tokens"] = self.stats["prompt_tokens"] - self._reused_tokens

    def _in_context(self, job: Job, cache, context: dict[int, PressMask]) -> Iterator[Decoded]:
        """The prompt's rows under phase-context presses, one at a time on its cache."""
        at = job.prompt.context_end
        for i, m in context.items():
            self._say(f"decoding 1 row under {m.press.name}, its context compressed")
            t0 = time.perf_counter()
            ids, kept = context_row(self.model, self.shape, cache, job.prompt.ids, at, m, self.stop,
                                    self.max_new_tokens, self.levers.prefill_chunk)
            self.stats["press_tokens"] = self.stats.get("press_tokens", 0) + len(job.prompt.ids) - 1 - at + \
                min(max(1, m.press.window), at)
            yield Decoded(job, i, ids, None, time.perf_counter() - t0, kept_keys=kept_keys(kept, at))

    def _group(self, group: list[Row[Job]], real: dict[int, RealCache | RealPress], shares: int,
               p: _Pass) -> Iterator[Decoded]:
        yield from self._real(group, None, real, shares)
        if p.masks:
            yield from self._decode(group, self._stack(group, len(p.masks)), p)
        self._forget(group)

    def _real(self, group: list[Row[Job]], cache, real: dict[int, RealCache | RealPress],
              shares: int) -> Iterator[Decoded]:
        """The group's rows under each phase-decode real-cache condition, from one plain cache of
        their prompts (``cache``, a prompt's own, or None: their snapshots stacked once), which
        each condition compresses into its own (``compress``; a press: one per row) and leaves
        as it was."""
        if not real:
            return
        plain = cache if cache is not None else stack_rows([r.snapshot for r in group], 0)
        chunk, reserve = self.levers.prefill_chunk, self.max_new_tokens
        for i, m in real.items():
            alone = not m.batched and len(group) > 1
            for rows, p in ((([r], row_of(plain, j)) for j, r in enumerate(group)) if alone else [(group, plain)]):
                prompts = [r.item.prompt.ids for r in rows]
                yield from self._on_real(rows, i, m, lambda m=m, p=p, prompts=prompts: m.compress(
                    self.model, self.shape, p, prompts, chunk, reserve), shares)
        for r in group:  # what is left of each prompt's prefill: its masked rows' share
            r.prefill_s *= (shares - len(real)) / shares

    def _fresh(self, jobs: list[Job], i: int, m: RealCache) -> Iterator[Decoded]:
        """A phase-all real-cache condition's pass: prompts of one length prefilled together under
        its rule into a fresh cache, and decoded on it. No prefix reuse: a compressed cache
        cannot be cropped back to the prefix two prompts share (its dropped keys are gone)."""
        batcher: RowBatcher[Job] = RowBatcher(self.budget, copies=1)

        def prefilled(group: list[Row[Job]]) -> Iterator[Decoded]:
            self._say(f"prefilling {count(len(group), 'prompt')} together ({group[0].length} tokens each) into a "
                      "compressed cache")
            self.stats["prompt_tokens"] += len(group) * (group[0].length - 1)
            prompts, chunk = [r.item.prompt.ids for r in group], self.levers.prefill_chunk
            yield from self._on_real(group, i, m, lambda: m.prefilled(self.model, self.shape, prompts, chunk,
                                                                      self.max_new_tokens), 1)

        for job in jobs:
            for group in batcher.add(Row(job, len(job.prompt.ids), None)):
                yield from prefilled(group)
        for group in batcher.flush():
            yield from prefilled(group)
        self.stats["prefilled_tokens"] = self.stats["prompt_tokens"] - self._reused_tokens

    def _on_real(self, group: list[Row[Job]], i: int, m: RealCache | RealPress, build: Callable[[], object],
                 shares: int) -> Iterator[Decoded]:
        """Decode ``group``'s rows under real-cache condition ``i`` as one batch, on the cache
        ``build()`` makes (its time counted in the rows'), each row also given its prefill's share."""
        self._say(f"decoding {count(len(group), 'row')} together on a compressed cache (up to "
                  f"{count(self.max_new_tokens, 'new token')} each)")
        b = decode_on(self.model, self.shape, m, build, [r.item.prompt.ids[-1] for r in group], group[0].length - 1,
                      self.stop, self.max_new_tokens)
        self.stats["decode_batches"].append(len(group))
        for r, ids in zip(group, b.outs):
            yield Decoded(r.item, i, ids, None, b.seconds + r.prefill_s / shares, kept_keys=b.kept_keys,
                          kv_bytes=b.held, kv_bytes_full=b.full)

    def _forget(self, group: list[Row[Job]]) -> None:
        for r in group:
            self._kept.pop(id(r.item), None)

    def _stack(self, group: list[Row[Job]], copies: int):
        snaps = [r.snapshot for r in group for _ in range(copies)]  # row j * copies + i
        for r in group:
            r.snapshot = None  # stack_rows frees each snapshot once copied
        return stack_rows(snaps, self.max_new_tokens)

    def _on_its_own(self, row: Row[Job], cache, p: _Pass) -> Iterator[Decoded]:
        """A prompt whose rows do not fit the budget together: chunks of rows that fit, all
        from its one prefill; a one-row chunk decodes on the cache itself, then crops back."""
        per = max(1, self.budget // row.length)
        snap = snapshot(cache) if per > 1 and len(p.masks) > 1 else None
        for lo in range(0, len(p.masks), per):
            part = _Pass(p.masks[lo:lo + per], p.index[lo:lo + per], p.prefill_mask)
            if snap is None:
                yield from self._decode([row], cache, part)
                cache.crop(-(cache.get_seq_length() - (row.length - 1)))  # back to the prompt
            else:
                yield from self._decode([row], stack_rows([snap] * len(part.masks), self.max_new_tokens), part)
            row.prefill_s = 0.0  # counted once, in the first chunk

    def _decode(self, group: list[Row[Job]], cache, p: _Pass) -> Iterator[Decoded]:
        """Decode ``group``'s rows (row j * len(masks) + i: prompt j under mask i) as one batch."""
        n = len(p.masks)
        rows = [(r, i) for r in group for i in range(n)]
        heads = [None if isinstance(p.masks[i], PressMask) else p.masks[i] for _, i in rows]
        if p.prefill_mask is not None:
            mask = p.prefill_mask  # phase all: one mask for every row, prefill and decode
        elif all(m is None for m in heads):
            mask = None
        else:
            mask = row_masks(self.shape, heads)
        kept = [self._kept[id(r.item)].get(p.index[i]) if id(r.item) in self._kept else None for r, i in rows]
        hooks = [] if all(k is None for k in kept) else [kept_hook(kept, group[0].length, self.shape)]
        reads = self._open(DECODE, [r.item.prompt for r, _ in rows], group[0].length - 1)
        hooks += [r.hook for r in reads.values()]  # a read sees the step computed from the query the mask leaves

        def on_step(row, t, tok, pos):
            for r in reads.values():
                r.step(row, t)

        self._say(f"decoding {count(len(rows), 'row')} together (up to {count(self.max_new_tokens, 'new token')} "
                  "each)")
        t0 = time.perf_counter()
        outs = decode_rows(self.model, [r.item.prompt.ids[-1] for r, _ in rows], group[0].length - 1, cache,
                           self.stop, self.max_new_tokens, mask=mask, on_step=on_step if reads else None,
                           hooks=hooks)
        self.stats["decode_batches"].append(len(rows))
        share = (time.perf_counter() - t0) / len(rows)
        self._count(reads)
        for k, ((r, i), ids) in enumerate(zip(rows, outs)):
            got = dict(self._prefilled.get(id(r.item), {}), **{name: x.result(k) for name, x in reads.items()})
            held = None if kept[k] is None else kept_keys(kept[k], group[0].length)
            yield Decoded(r.item, p.index[i], ids, None, share + r.prefill_s / n, reads=got, kept_keys=held)

    def _open(self, phase: str, prompts: list[Prompt], query_position: int = 0) -> dict[str, Reading]:
        """The readings of ``run``'s reads of ``phase`` for ``prompts``' scope, by name."""
        return {r.name: r.open(prompts, self.shape.num_layers, query_position) for r in self._reads
                if r.phase == phase}

    def _count(self, readings: dict[str, Reading]) -> None:
        for r in readings.values():
            for k, v in r.cost().items():
                self.stats[k] = self.stats.get(k, 0.0) + v
