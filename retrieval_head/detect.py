"""Retrieval-head detection: needle trials scored head by head.

Python API (a notebook)::

    from retrieval_head import load_model, ModelSpec, detect, DetectSettings
    model, tok, _ = load_model(ModelSpec())           # the embedded SmolLM2
    result = detect(model, tok, DetectSettings(context_lengths=(800,), depth_percents=(25, 75)))
    result.mean_scores().shape                        # torch.Size([30, 9]): [layers, heads]

A trial counts when the answer's ROUGE-1 recall exceeds the threshold; a head's score is
the mean of its trial scores over counted trials (see ``scoring``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .attention import ArgmaxProbe
from .batching import Row, RowBatcher, auto_budget
from .decode import check_supported, decode_rows, greedy_decode, stop_token_mask
from .errors import UserError
from .haystack import Needle, default_haystack_dir, load_needles, read_haystack
from .kvcache import snapshot
from .prefix import FreshPrefix, SharedPrefix
from .prompt import Prompt, PromptBuilder, uses_chat_template
from .scoring import RetrievalScorer, rouge1_recall
from .shard import assign

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """One (needle, context length, depth) cell of the sweep; sorts in canonical order."""

    needle_id: int
    context_length: int
    depth_percent: int

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.needle_id, self.context_length, self.depth_percent)


def sweep_lengths(s: int, e: int, num: int) -> list[int]:
    """The original's grid, ``round(linspace(s, e, num))``, zeros dropped (with a notice).

    >>> sweep_lengths(0, 5000, 5)
    [1250, 2500, 3750, 5000]
    """
    if s < 0 or e < 0:
        raise UserError(f"context lengths must be positive, got --s {s} --e {e}")
    if s > e:
        raise UserError(f"--s {s} is larger than --e {e}; swap them")
    if num < 1:
        raise UserError("--num_lengths must be at least 1")
    grid = [int(x) for x in np.round(np.linspace(s, e, num=num, endpoint=True))]
    if 0 in grid:
        log.warning("context length 0 dropped from the grid (as --s 0 in the original does)")
    out = sorted(set(x for x in grid if x > 0))
    if not out:
        raise UserError(f"--s {s} --e {e} leaves no positive context length; raise --e")
    return out


def sweep_depths(num: int) -> list[int]:
    """``round(linspace(0, 100, num))``: 0, 11, 22, ... 100 for 10."""
    if num < 1:
        raise UserError("--num_depths must be at least 1")
    return sorted(set(int(x) for x in np.round(np.linspace(0, 100, num=num, endpoint=True))))


def trial_grid(needles: list[Needle], lengths: Iterable[int], depths: Iterable[int]) -> list[Trial]:
    """Every needle at every (length, depth), in canonical order."""
    return [Trial(n.needle_id, L, d) for n in needles for L in lengths for d in depths]


@dataclass
class Haystacks:
    """One PromptBuilder per haystack source (the default, ``--haystack_dir`` or a needle's own)."""

    tokenizer: object
    chat_template: bool
    override: Path | None = None
    _builders: dict = field(default_factory=dict)

    def for_needle(self, needle: Needle) -> PromptBuilder:
        src = self.override or needle.haystack or default_haystack_dir()
        if src not in self._builders:
            self._builders[src] = PromptBuilder(self.tokenizer, read_haystack(src), self.chat_template)
        return self._builders[src]


def check_grid(model, haystacks: Haystacks, needles: list[Needle], lengths: list[int], max_new_tokens: int,
               max_positions: int | None) -> None:
    """Refuse, before any trial runs, lengths no prompt can have."""
    for n in needles:
        b = haystacks.for_needle(n)
        over = b.overhead(n)
        if min(lengths) < over:
            raise UserError(
                f"context length {min(lengths)} is below needle {n.needle_id}'s fixed prompt overhead "
                f"({over} tokens: template, needle, question); raise --s to at least {over}"
            )
        if max(lengths) - over > len(b.haystack):
            raise UserError(
                f"the haystack has {len(b.haystack)} tokens, too short for context length {max(lengths)}; "
                "lower --e or pass a larger --haystack_dir"
            )
    if max_positions is not None and max(lengths) + max_new_tokens > max_positions:
        raise UserError(
            f"context length {max(lengths)} + {max_new_tokens} new tokens exceeds the model's "
            f"{max_positions} positions; lower --e or use a long-context --model_path"
        )


def trial_record(tokenizer, prompt: Prompt, needle: Needle, ids: list[int], scorer: RetrievalScorer,
                 rouge_threshold: float, seconds: float) -> dict:
    """The record of one decoded trial (without its sweep keys)."""
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    recall = rouge1_recall(text, needle.real_needle)
    return {
        "prompt_length": len(prompt.ids),
        "needle_span": list(prompt.needle_span),
        "insert_at": prompt.insert_at,
        "response": text,
        "response_ids": ids,
        "rouge1_recall": recall,
        "passed": recall > rouge_threshold,
        "head_scores": scorer.scores().tolist(),
        "duration_s": round(seconds, 4),
    }


def _scorer(model, prompt: Prompt, score_mode: str) -> RetrievalScorer:
    cfg = model.config
    return RetrievalScorer(prompt.ids, prompt.needle_span, cfg.num_hidden_layers, cfg.num_attention_heads,
                           score_mode, device=model.get_input_embeddings().weight.device)


def run_trial(model, tokenizer, prompt: Prompt, needle: Needle, stop_mask: torch.Tensor, *,
              max_new_tokens: int, rouge_threshold: float, score_mode: str,
              prefill_chunk: int | None = None, cache=None) -> dict:
    """Decode one prompt under the probe; the trial record (without its sweep keys).
    ``cache``, when given, already holds ``prompt.ids[:-1]`` (a reused prefix)."""
    scorer = _scorer(model, prompt, score_mode)
    t0 = time.perf_counter()
    gen = greedy_decode(model, tokenizer, prompt.ids, stop_mask, max_new_tokens, probe=ArgmaxProbe(),
                        on_step=lambda t, tok, pos: scorer.update(pos, tok), prefill_chunk=prefill_chunk,
                        cache=cache)
    return trial_record(tokenizer, prompt, needle, gen.ids, scorer, rouge_threshold, time.perf_counter() - t0)


def decode_trials(model, tokenizer, rows: list[Row], cache, stop_mask: torch.Tensor, st: "DetectSettings") -> list[dict]:
    """Decode prefilled trials of one prompt length as one batch (``cache`` has a row each)
    under the probe; their records, each with its sweep keys. ``row.info`` holds the
    trial, prompt, needle and prefill seconds."""
    prompts = [r.info["prompt"] for r in rows]
    scorers = [_scorer(model, p, st.score) for p in prompts]
    t0 = time.perf_counter()
    outs = decode_rows(model, [p.ids[-1] for p in prompts], len(prompts[0].ids) - 1, cache, stop_mask,
                       st.max_new_tokens, probe=ArgmaxProbe(),
                       on_step=lambda i, t, tok, pos: scorers[i].update(pos, tok))
    share = (time.perf_counter() - t0) / len(rows)
    records = []
    for r, p, ids, sc in zip(rows, prompts, outs, scorers):
        trial = r.info["trial"]
        rec = {"needle_id": trial.needle_id, "context_length": trial.context_length,
               "depth_percent": trial.depth_percent}
        rec.update(trial_record(tokenizer, p, r.info["needle"], ids, sc, st.rouge_threshold, r.info["prefill_s"] + share))
        if st.save_prompts:
            rec["prompt_ids"] = p.ids
        records.append(rec)
    return records


@dataclass
class DetectionResult:
    """All trial records of a sweep; the head scores are derived from them."""

    num_layers: int
    num_heads: int
    trials: list[dict]
    stats: dict = field(default_factory=dict)  # how the sweep ran (prefill tokens, decode batches)

    def passed(self) -> list[dict]:
        return sorted((t for t in self.trials if t["passed"]),
                      key=lambda t: (t["needle_id"], t["context_length"], t["depth_percent"]))

    def head_counter(self) -> dict[str, list[float]]:
        """The original's format: ``{"layer-head": [score of each counted trial]}``."""
        rows = [t["head_scores"] for t in self.passed()]
        return {f"{l}-{h}": [r[l][h] for r in rows] for l in range(self.num_layers) for h in range(self.num_heads)}

    def kv_head_counter(self, num_kv_heads: int, agg: str) -> dict[str, list[float]]:
        """Per-KV-head scores in the same format (``"layer-kvhead"``): each trial's query-head
        scores aggregated over the KV head's group (``max`` or ``mean``), then listed per
        counted trial. Query head h reads KV head ``h // (heads // kv_heads)``.

        >>> r = DetectionResult(1, 4, [dict(needle_id=0, context_length=1, depth_percent=0, passed=True,
        ...                                 head_scores=[[0.5, 0.1, 0.0, 0.2]])])
        >>> r.kv_head_counter(2, "max"), r.kv_head_counter(2, "mean")
        ({'0-0': [0.5], '0-1': [0.2]}, {'0-0': [0.3], '0-1': [0.1]})
        """
        group = self.num_heads // num_kv_heads
        rows = torch.tensor([t["head_scores"] for t in self.passed()], dtype=torch.float64)
        rows = rows.reshape(len(rows), self.num_layers, num_kv_heads, group)
        kv = rows.amax(-1) if agg == "max" else rows.mean(-1)  # [trials, layers, kv_heads]
        return {f"{l}-{k}": kv[:, l, k].tolist() for l in range(self.num_layers) for k in range(num_kv_heads)}

    def mean_scores(self) -> torch.Tensor:
        """float64 ``[layers, heads]``: mean over counted trials (zeros when none counted)."""
        rows = [t["head_scores"] for t in self.passed()]
        if not rows:
            return torch.zeros(self.num_layers, self.num_heads, dtype=torch.float64)
        return torch.tensor(rows, dtype=torch.float64).mean(0)


@dataclass(frozen=True)
class DetectSettings:
    """Everything that defines a detection sweep besides the model (the single source of
    defaults for the API and the CLI)."""

    context_lengths: tuple[int, ...] = (1000,)
    depth_percents: tuple[int, ...] = (0, 25, 50, 75, 100)
    haystack_dir: str | None = None  # None: each needle's own haystack, else the default
    needles: str | None = None  # None: haystack/needles.jsonl
    chat_template: str = "auto"  # auto | on | off
    max_new_tokens: int = 50
    rouge_threshold: float = 50.0
    score: str = "count"  # count (the reference's) | set (the paper's)
    prefill_chunk: int | None = None
    # Speed levers that change no score and no response (tests/test_prefix.py):
    prefix_reuse: bool = True  # run trials in insertion order, reusing the shared prompt prefix
    batch_tokens: int | None = None  # decode trials of one length together up to this many cached
    #                                   tokens (None: batching.auto_budget; 0: one at a time)
    save_prompts: bool = False


@dataclass
class Plan:
    """A checked sweep: needles, grid and haystacks, ready to run."""

    needles: list[Needle]
    lengths: list[int]
    depths: list[int]
    haystacks: Haystacks


def plan(model, tokenizer, settings: DetectSettings) -> Plan:
    """Check everything a sweep needs before any trial runs or any file is written."""
    from .models import max_positions

    st = settings
    needles = load_needles(st.needles)
    lengths, depths = sorted(set(st.context_lengths)), sorted(set(st.depth_percents))
    for d in depths:
        if not 0 <= d <= 100:
            raise UserError(f"depth {d} is outside 0..100; fix --depth_percents")
    hay = Haystacks(tokenizer, uses_chat_template(tokenizer, st.chat_template),
                    Path(st.haystack_dir) if st.haystack_dir else None)
    check_grid(model, hay, needles, lengths, st.max_new_tokens, max_positions(model))
    check_supported(model)
    return Plan(needles, lengths, depths, hay)


def _run_trials(model, tokenizer, todo: list[Trial], prompts: dict, by_id: dict, stop: torch.Tensor,
                st: DetectSettings, emit: Callable[[dict], None]) -> dict:
    """Prefill the trials in ``todo``'s order (reusing the shared prefix with ``prefix_reuse``)
    and decode those of one length together (``batching.RowBatcher``); ``emit`` gets each
    record as its batch finishes. Returns how the sweep ran."""
    reserve = st.max_new_tokens
    source = (SharedPrefix if st.prefix_reuse else FreshPrefix)(model, chunk=st.prefill_chunk, reserve=reserve)
    batches: list[int] = []

    def finish(rows: list[Row], cache) -> None:
        batches.append(len(rows))
        for rec in decode_trials(model, tokenizer, rows, cache, stop, st):
            emit(rec)

    budget = st.batch_tokens if st.batch_tokens is not None else auto_budget(model)
    batcher = RowBatcher(budget, finish, reserve)
    for trial in todo:
        prompt = prompts[trial.key]
        alone = batcher.rows_for(len(prompt.ids)) == 1
        t0 = time.perf_counter()
        cache = source.cache_for(prompt.ids, keep_all=not alone)
        row = Row(trial.key, len(prompt.ids), None,
                  dict(trial=trial, prompt=prompt, needle=by_id[trial.needle_id], prefill_s=time.perf_counter() - t0))
        if alone:  # decoded on the cache itself: no copy
            finish([row], cache)
        else:
            row.snapshot = snapshot(cache)
            batcher.add(row)
    batcher.flush()
    prompt_tokens = sum(len(prompts[t.key].ids) - 1 for t in todo)
    stats = {"prefix_reuse": st.prefix_reuse, "batch_tokens": budget, "prompt_tokens": prompt_tokens,
             "prefilled_tokens": prompt_tokens - getattr(source, "reused_tokens", 0), "decode_batches": batches}
    log.info("prefilled %d of %d prompt tokens; %d trials decoded in %d batches", stats["prefilled_tokens"],
             prompt_tokens, len(todo), len(batches))
    return stats


def detect(model, tokenizer, settings: DetectSettings = DetectSettings(), *,
           on_trial: Callable[[dict], None] | None = None, progress: bool = True,
           done: dict[tuple[int, int, int], dict] | None = None, checked: Plan | None = None,
           shard: tuple[int, int] = (0, 1)) -> DetectionResult:
    """Run every trial and return their records; ``on_trial`` sees each new one as it finishes.

    ``done`` maps ``(needle_id, context_length, depth_percent)`` to records of trials that
    already ran with the same settings (a resumed run): they are reused, not run again.
    ``checked`` is this sweep's ``plan`` when the caller already made it. ``shard`` =
    ``(rank, world_size)`` runs only this rank's share of the trials (see ``shard.assign``).
    """
    done = done or {}
    st = settings
    p = checked or plan(model, tokenizer, settings)
    needles, lengths, depths, hay = p.needles, p.lengths, p.depths, p.haystacks
    stop = stop_token_mask(model, tokenizer)
    by_id = {n.needle_id: n for n in needles}
    grid = trial_grid(needles, lengths, depths)
    if shard[1] > 1:
        mine = set(assign([t.key for t in grid], lambda k: k[1] + st.max_new_tokens, shard[1])[shard[0]])
        grid = [t for t in grid if t.key in mine]
    todo = [t for t in grid if t.key not in done]
    if len(todo) < len(grid):
        log.info("resuming: %d of %d trials already done", len(grid) - len(todo), len(grid))
    records = [done[t.key] for t in grid if t.key in done]
    prompts = {t.key: hay.for_needle(by_id[t.needle_id]).build(by_id[t.needle_id], t.context_length,
                                                               t.depth_percent) for t in todo}
    if st.prefix_reuse:  # ascending insertion points: each trial extends the last one's prefix
        todo = sorted(todo, key=lambda t: (id(hay.for_needle(by_id[t.needle_id])), prompts[t.key].insert_at, t.key))
    bar = tqdm(total=len(todo), desc="detect", disable=not progress)

    def emit(rec: dict) -> None:
        records.append(rec)
        bar.update(1)
        if on_trial is not None:
            on_trial(rec)

    stats = _run_trials(model, tokenizer, todo, prompts, by_id, stop, st, emit)
    bar.close()
    return DetectionResult(model.config.num_hidden_layers, model.config.num_attention_heads, records, stats)
