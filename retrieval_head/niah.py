"""Needle-in-a-haystack with heads masked: top-K vs random-K vs none.

Conditions (the original's ``--mask_topk K``):
  K > 0  mask the K best heads by mean retrieval score (ties in layer-major order);
  K < 0  mask |K| random heads, drawn with a recorded seed from the heads that are *not*
         retrieval heads (see ``select_random``);
  K = 0  mask nothing.

One prompt serves every condition of a trial: when all masks act only while decoding
(``phase="decode"``, the default), the prompt is prefilled once and each condition
decodes from the same cache (cropped back, or copied for sliding-window caches). With
``batch_conditions`` the cells also reuse the prompt prefix they share and the cells of one
length decode as one batch, a row per (cell, condition) with its own heads.

Worked example::

    >>> scores = torch.tensor([[0.9, 0.0], [0.5, 0.2]])
    >>> select_top(scores, 2).nonzero().tolist()
    [[0, 0], [1, 0]]
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .attention import HeadMask
from .batching import Row, RowBatcher, auto_budget
from .decode import Generation, decode_rows, greedy_decode, greedy_decode_batch, input_device, prefill, row_masks
from .errors import UserError
from .haystack import Needle
from .kvcache import snapshot
from .manifest import utc_now
from .prefix import SharedPrefix
from .prompt import PromptBuilder
from .scoring import rouge1_recall
from .scores_io import top_heads

log = logging.getLogger(__name__)

RANDOM_EXCLUDE_SCORE = 0.1  # a head scoring this much is a retrieval head: never a random pick
RANDOM_EXCLUDE_FRACTION = 0.10  # ... and the top max(K, 10%) heads are excluded regardless


def select_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool ``[layers, heads]``: the k best heads (ties broken in layer-major order)."""
    total = scores.numel()
    if k > total:
        raise UserError(f"--mask_top {k} is larger than the model's {total} heads")
    nonzero = int((scores > 0).sum())
    if k > nonzero:
        log.warning("masking top %d heads, but only %d heads have a nonzero score", k, nonzero)
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for l, h, _ in top_heads(scores, k):
        out[l, h] = True
    return out


def random_pool(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Heads random draws may use: not scoring >= 0.1 and not in the top max(k, 10%)."""
    n_top = max(k, math.ceil(RANDOM_EXCLUDE_FRACTION * scores.numel()))
    excluded = {(l, h) for l, h, _ in top_heads(scores, n_top)}
    excluded |= {tuple(x) for x in (scores >= RANDOM_EXCLUDE_SCORE).nonzero().tolist()}
    return [(l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1]) if (l, h) not in excluded]


def select_random(scores: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """bool ``[layers, heads]``: k heads drawn with ``seed`` from ``random_pool``."""
    pool = random_pool(scores, k)
    if k > len(pool):
        raise UserError(
            f"--mask_top -{k}: only {len(pool)} heads remain after excluding retrieval heads "
            f"(score >= {RANDOM_EXCLUDE_SCORE} or top max(K, 10%)); use a smaller K"
        )
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for i in torch.randperm(len(pool), generator=g)[:k].tolist():
        out[pool[i]] = True
    return out


@dataclass(frozen=True)
class Condition:
    """One masking condition of a run, and where its results go."""

    kind: str  # none | top | random
    k: int
    mask: HeadMask | None
    seed: int | None = None
    folder: str = ""
    unit: str = "query"  # query | kv: K counts query heads or whole KV-head groups

    def describe(self) -> dict:
        d = {"kind": self.kind, "k": self.k, "seed": self.seed, "unit": self.unit}
        d.update(self.mask.describe() if self.mask is not None else {"heads": [], "mode": None, "phase": None})
        return d

    def label(self) -> str:
        if self.kind == "none":
            return "no heads masked"
        seed = f", seed {self.seed}" if self.kind == "random" else ""
        unit = " KV" if self.unit == "kv" else ""
        return f"{self.kind}-{self.k}{unit} heads masked ({self.mask.mode}, {self.mask.phase}{seed})"


def make_conditions(model_name: str, ks: list[int], scores: torch.Tensor | None, mode: str, phase: str,
                    seeds: list[int], seed_folders: bool, group: int | None = None) -> list[Condition]:
    """Resolve ``--mask_top`` values (and seeds for random draws) into conditions.

    ``group`` (query heads per KV head) switches to KV units: ``scores`` is then
    ``[layers, kv_heads]`` and each selected KV head masks all the query heads it serves.
    """
    suffix = ("" if mode == "uniform" else f"_{mode}") + ("" if phase == "decode" else f"_{phase}")
    suffix += "_kv" if group else ""
    unit = "kv" if group else "query"

    def as_mask(sel: torch.Tensor) -> HeadMask:
        return HeadMask(sel.repeat_interleave(group, dim=1) if group else sel, mode, phase)

    out = []
    for k in ks:
        if k == 0:
            out.append(Condition("none", 0, None, folder=model_name))
            continue
        if scores is None:
            raise UserError("masking needs head scores; pass --head_score FILE or run retrieval_head_detection.py")
        if k > 0:
            out.append(Condition("top", k, as_mask(select_top(scores, k)),
                                 folder=f"{model_name}_block_top{k}{suffix}", unit=unit))
            continue
        for s in seeds:
            folder = f"{model_name}_block_random{-k}{suffix}" + (f"_seed{s}" if seed_folders else "")
            out.append(Condition("random", -k, as_mask(select_random(scores, -k, s)), s, folder, unit))
    return out


def _reusable(cache) -> bool:
    """Whether a cache can be cropped back after a decode (sliding layers cannot)."""
    return not any(getattr(cache, "is_sliding", []) or [])


@dataclass
class NiahSettings:
    max_new_tokens: int = 50
    prefill_chunk: int | None = None
    batch_conditions: bool = False  # decode all conditions of a cell as one batch
    # With batch_conditions: cells in insertion order reuse the shared prompt prefix, and the
    # cells of one length decode together while their caches (one per condition) hold at most
    # this many tokens (None: batching.auto_budget; 0: one cell at a time, one prefill each).
    batch_tokens: int | None = None
    version: int = 1
    model_name: str = ""
    extra: dict = field(default_factory=dict)


def run_cell(model, tokenizer, builder: PromptBuilder, needle: Needle, length: int, depth: int,
             conditions: list[Condition], stop: torch.Tensor, st: NiahSettings) -> list[dict]:
    """All conditions of one (length, depth) cell; one record per condition."""
    prompt = builder.build(needle, length, depth)
    ids = torch.tensor([prompt.ids], device=input_device(model))
    shared = None
    decode_only = all(c.mask is None or c.mask.phase == "decode" for c in conditions)
    if decode_only:
        shared = prefill(model, ids[:, :-1], st.prefill_chunk, reserve=st.max_new_tokens)
    modes = {c.mask.mode for c in conditions if c.mask is not None}
    batched = None
    if st.batch_conditions and decode_only and len(modes) <= 1:
        t0 = time.perf_counter()
        batched = greedy_decode_batch(model, tokenizer, prompt.ids, stop, st.max_new_tokens,
                                      [c.mask for c in conditions], shared)
        per_condition = (time.perf_counter() - t0) / len(conditions)
    records = []
    for i, c in enumerate(conditions):
        t0 = time.perf_counter()
        if batched is not None:
            gen = batched[i]
        else:
            gen = _decode_one(model, tokenizer, prompt.ids, stop, st, c, shared)
        records.append(_record(st, needle, prompt, length, depth, c, gen,
                               per_condition if batched else time.perf_counter() - t0))
    return records


def _record(st: NiahSettings, needle: Needle, prompt, length: int, depth: int, c: Condition, gen,
            seconds: float) -> dict:
    """One condition's result in the original's format, plus the mask and response ids."""
    return {
        "model": st.model_name, "context_length": length, "depth_percent": depth, "version": st.version,
        "needle": needle.needle, "model_response": gen.text, "score": rouge1_recall(gen.text, needle.real_needle),
        "test_duration_seconds": round(seconds, 4), "test_timestamp_utc": utc_now(),
        "question": needle.question, "real_needle": needle.real_needle, "needle_span": list(prompt.needle_span),
        "response_ids": gen.ids, "mask": c.describe(), **st.extra,
    }


def _decode_one(model, tokenizer, prompt_ids, stop, st: NiahSettings, c: Condition, shared):
    """One condition from the shared prefill (cropped back afterwards) or its own."""
    cache = None if shared is None else (shared if _reusable(shared) else copy.deepcopy(shared))
    gen = greedy_decode(model, tokenizer, prompt_ids, stop, st.max_new_tokens, mask=c.mask,
                        prefill_chunk=st.prefill_chunk, cache=cache)
    if cache is not None and cache is shared:
        extra = shared.get_seq_length() - (len(prompt_ids) - 1)
        if extra > 0:
            shared.crop(-extra)  # back to the prompt: the next condition decodes from it
    return gen


def run_niah(model, tokenizer, builder: PromptBuilder, needle: Needle, lengths: list[int], depths: list[int],
             conditions: list[Condition], stop: torch.Tensor, st: NiahSettings, on_record=None,
             progress: bool = True, skip: frozenset = frozenset()) -> dict[str, list[dict]]:
    """Every (length, depth) under every condition, but the cells in ``skip`` (already done);
    new records grouped by condition folder, each passed to ``on_record`` as it is made."""
    out: dict[str, list[dict]] = {c.folder: [] for c in conditions}
    cells = [(L, d) for L in lengths for d in depths if (L, d) not in skip]
    bar = tqdm(total=len(cells), desc="niah", disable=not progress)

    def emit(records: list[dict]) -> None:
        for c, rec in zip(conditions, records):
            out[c.folder].append(rec)
            if on_record is not None:
                on_record(c, rec)
        bar.update(1)

    modes = {c.mask.mode for c in conditions if c.mask is not None}
    decode_only = all(c.mask is None or c.mask.phase == "decode" for c in conditions)
    budget = st.batch_tokens if st.batch_tokens is not None else auto_budget(model)
    grouped = [] if not (st.batch_conditions and decode_only and len(modes) <= 1) else \
        [cell for cell in cells if len(conditions) * cell[0] <= budget]
    if grouped:
        _run_grouped(model, tokenizer, builder, needle, grouped, conditions, stop, st, budget, emit)
    for L, d in (cell for cell in cells if cell not in set(grouped)):
        emit(run_cell(model, tokenizer, builder, needle, L, d, conditions, stop, st))
    bar.close()
    for recs in out.values():  # cells finish in insertion and batch order; report them in grid order
        recs.sort(key=lambda r: (r["context_length"], r["depth_percent"]))
    return out


def _run_grouped(model, tokenizer, builder: PromptBuilder, needle: Needle, cells: list[tuple[int, int]],
                 conditions: list[Condition], stop: torch.Tensor, st: NiahSettings, budget: int, emit) -> None:
    """Decode-phase conditions over many cells: cells in ascending insertion order reuse the
    prompt prefix they share (``SharedPrefix``), and the cells of one length decode together,
    each (cell, condition) a batch row with its own heads (``decode.decode_rows``)."""
    prompts = {cell: builder.build(needle, *cell) for cell in cells}
    source = SharedPrefix(model, chunk=st.prefill_chunk, reserve=st.max_new_tokens)
    n = len(conditions)
    mask = row_masks(model, [c.mask for c in conditions])  # heads [conditions, layers, heads]

    def finish(rows: list[Row], cache) -> None:  # cache row j*n + i: cell j under condition i
        ps = [r.info["prompt"] for r in rows]
        t0 = time.perf_counter()
        outs = decode_rows(model, [p.ids[-1] for p in ps for _ in conditions], len(ps[0].ids) - 1, cache, stop,
                           st.max_new_tokens, mask=HeadMask(mask.heads.repeat(len(rows), 1, 1), mask.mode, "decode"))
        share = (time.perf_counter() - t0) / len(outs)
        for j, r in enumerate(rows):
            (L, d), p = r.key, ps[j]
            gens = [Generation(ids, tokenizer.decode(ids, skip_special_tokens=True).strip())
                    for ids in outs[j * n:(j + 1) * n]]
            emit([_record(st, needle, p, L, d, c, g, share + r.info["prefill_s"] / n)
                  for c, g in zip(conditions, gens)])

    batcher = RowBatcher(budget, finish, st.max_new_tokens, copies=n)
    for cell in sorted(cells, key=lambda cell: (prompts[cell].insert_at, cell)):
        t0 = time.perf_counter()
        cache = source.cache_for(prompts[cell].ids)
        batcher.add(Row(cell, len(prompts[cell].ids), snapshot(cache),
                        dict(prompt=prompts[cell], prefill_s=time.perf_counter() - t0)))
    batcher.flush()
