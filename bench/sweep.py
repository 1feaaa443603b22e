"""Whole sweeps vs the naive floor: detection, masked NIAH, probe step, memory, original, streaming.

On the default model (SmolLM2-135M-Instruct) at CPU-sized lengths, one run measures, on the
same machine and in the same process (memory: fresh child processes):

  1. Detection sweep: ``detect(model, tok, DetectSettings(context_lengths, depth_percents))``
     over all default needles x lengths x depths, against the naive floor: the sum over the
     same prompts of ``model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False)``
     with N = that trial's number of new tokens (``len(response_ids)``). Target <= 0.75. Lever
     rows: the same sweep as independent trials, with prefix reuse only, with batched decoding
     only (their responses and head scores are checked identical to the defaults').
  2. Masked-NIAH sweep: none / top-10 / random-10 (head scores = item 1's ``mean_scores()``),
     ``run_niah`` on needle 0 over the same lengths x depths, against the sum of plain
     generate for every (condition, cell) prompt with that condition's N. Target <= 0.5 for
     the CLI's defaults (prefix reuse + batched decoding: one length's cells x conditions
     decoded together); lever rows, as item 1's: independent cells (one prefill per cell, its
     conditions decoded one by one from it), prefix reuse only, batched decoding only (their
     responses are checked identical to the defaults').
  3. One decode step under ``intervene(model, probe=ArgmaxProbe())`` against a plain decode
     step, at the longest length (prefilled ``DynamicCache``, K steps per run, the cache
     cropped back between runs, runs interleaved with alternating order; medians of the
     per-step times). Target <= 1.05.
  4. Peak memory of one detection trial (``detection_overhead.trial``: one job through the
     ``Scheduler`` with no levers, then ``detect.trial_record``) against plain generate at the longest
     length, each in fresh processes (``detection_overhead.cpu_peak``; CUDA: peak allocated).
     Target <= 1.1. Row 4b (information): the whole sweep's peak with the defaults against
     the same sweep as independent trials; batched decoding holds up to its budget of
     cached tokens (``DetectSettings.batch_tokens``) of prefilled trials.
  5. The original algorithm, as a baseline row: the same detection prompts prefilled through
     SDPA, then N decode steps with the model switched to eager and ``output_attentions=True``,
     and the per-head top-1 computed by a Python loop over layers and heads (the original's
     ``retrieval_calculate``); its time against the same floor.
  6. The streaming (KV-cache compression) experiment's cost against item 2's defaults row:
     ``run_niah`` on needle 0 over the same lengths x depths, with the scheduler's defaults,
     under none / keep-top-27 / keep-random-27 (seed 0; ``compress.keep_conditions`` from
     item 1's scores: the kept heads at full cache, every other head streamed with sink 4 +
     recent 64), once with ``phase="decode"`` (the prompt's cache compressed once after the
     prefill: one prefill per cell shared by all three conditions, as the masked sweep) and
     once with ``phase="all"`` (streamed from the first token: a prefill per streaming
     condition and cell, besides the unmasked condition's). Ratio = streaming wall s /
     masked-sweep wall s (information, no target); the profile gives how many prompt
     prefills each sweep ran (counted by a wrapper around the scheduler's passes), each
     condition's mean score and KV cache kept, and whether the unmasked condition answered
     as in item 2.

Times are wall seconds (process CPU seconds in an extra column: less sensitive to other jobs
on a shared machine). A profile (prefill vs decode share, per-condition decode cost) follows
the table. The section "## Sweeps vs the naive floor" of ``--out`` is replaced
(the other sections are kept); ``--quick`` runs a tiny grid and writes only with ``--out``.

Run (from the repo root; one heavy process at a time on a small shared machine)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py --quick                 # smoke run, ~5 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py                         # lengths 1000 2000, depths 10 50 90
    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py --lengths "1000 2000" --depths "10 90" --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

SECTION = "## Sweeps vs the naive floor"
VARIANTS = {"default": {}, "independent": dict(prefix_reuse=False, batch_tokens=0),
            "reuse": dict(prefix_reuse=True, batch_tokens=0), "batches": dict(prefix_reuse=False, batch_tokens=None)}
NIAH_VARIANTS = VARIANTS  # the masked NIAH has the same scheduler and levers as detection
NIAH_TEXT = {"default": "**defaults: prefix reuse + batched decoding (cells share prefixes, one length's cells x "
                        "conditions decoded together)**",
             "independent": "independent cells: one prefill per cell, its conditions one by one (lever row)",
             "reuse": "prefix reuse only: cells share prefixes, conditions one by one (lever row)",
             "batches": "batched decoding only: one prefill per cell, one length's cells x conditions decoded "
                        "together (lever row)"}
VARIANT_TEXT = {"default": "**defaults: prefix reuse + batched decoding**",
                "independent": "independent trials (lever row)", "reuse": "prefix reuse only (lever row)",
                "batches": "batched decoding only (lever row)"}
K_HEADS = 10
K_KEEP, SINK, RECENT = 27, 4, 64  # item 6: heads kept at full cache; every other head sees sink + recent keys
STREAM_PHASES = ("decode", "all")
TARGETS = {"detect": 0.75, "niah": 0.5, "step": 1.05, "mem": 1.1}


def trial_key(t: dict) -> tuple[int, int, int]:
    return (t["needle_id"], t["context_length"], t["depth_percent"])


def memory_note(model, budget: int) -> str:
    from retrieval_head.models.shape import ModelShape

    per = ModelShape.of(model).kv_bytes_per_token(next(model.parameters()).element_size())
    return (f"Memory (row 4b): the defaults also hold the prefilled trials that wait for their batch: at most "
            f"`batch_tokens` = {budget} cached tokens ({per / 1024:.0f} KiB per token here = "
            f"{budget * per / 2**20:.0f} MiB), plus the batch being decoded. That budget is the default only "
            f"while a quarter of the free memory (RAM, or the GPU's) holds it, and a prompt longer than half the "
            f"budget is decoded alone on its own cache: at long contexts, where memory binds, a sweep holds that "
            f"prompt's cache (as plain generation does) plus at most the budget of shorter trials. "
            f"`--batch_tokens 0` turns batching off. Both sweeps' peaks include loading and tokenizing the "
            f"haystack (row 4's single trial starts after that).")


@contextlib.contextmanager
def counted_prefills():
    """``run_niah``'s ``Scheduler`` replaced, for the block, by a subclass that counts its
    passes and prompt prefills (``run_niah`` returns no scheduler stats): yields a list that
    gets each scheduler's ``stats`` dict, with ``passes`` and ``prefills`` (prompts prefilled,
    each after prefix reuse only what follows its shared prefix) added."""
    from retrieval_head.engine import scheduler as schedule
    from retrieval_head.experiments import mask as niah

    made: list[dict] = []

    class Counting(schedule.Scheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.stats.update(passes=0, prefills=0)
            made.append(self.stats)

        def _pass(self, jobs, p, probe):  # one pass = one prefill of every job
            self.stats["passes"] += 1
            self.stats["prefills"] += len(jobs)
            yield from super()._pass(jobs, p, probe)

    saved, niah.Scheduler = niah.Scheduler, Counting
    try:
        yield made
    finally:
        niah.Scheduler = saved


def counts(stats: dict) -> str:
    """'N prompt prefills in P passes' of a ``counted_prefills`` stats dict."""
    n, p = stats["prefills"], stats["passes"]
    return f"{n} prompt prefill{'s' * (n != 1)} in {p} pass{'es' * (p != 1)}"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


class Clock:
    """Wall and process-CPU seconds of a block, added to a running total."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    @contextlib.contextmanager
    def __call__(self):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c


def original_trial(model, tok, prompt, n: int):
    """The original algorithm: SDPA prefill, then n eager decode steps with
    ``output_attentions=True`` and a Python loop over layers x heads for the top-1 key.
    Returns (token ids, head scores [[score, tokens]...] per layer/head as the original)."""
    import torch

    from retrieval_head.core.decode import cache_kwarg, prefill
    from retrieval_head.models.shape import ModelShape

    cfg = model.config  # only to switch the attention implementation
    layers, heads = ModelShape.of(model).grid
    ids = torch.tensor([prompt.ids], device=model.device)
    s, e = prompt.needle_span
    prompt_ids = ids[0]
    retrieval_score = [[[0, ""] for _ in range(heads)] for _ in range(layers)]
    out_ids = []
    with torch.no_grad():
        cache = prefill(model, ids[:, :-1])  # SDPA, as the original's flash-attention prefill
        inp = ids[:, -1:]
        saved = cfg._attn_implementation
        cfg._attn_implementation = "eager"
        try:
            for _ in range(n):
                out = model(input_ids=inp.view(1, 1), use_cache=True, output_attentions=True,
                            **{cache_kwarg(model): cache})
                inp = out.logits[0, -1].argmax()
                step_token = tok.convert_ids_to_tokens(inp.item())
                out_ids.append(inp.item())
                attention_maxtrix = out.attentions
                for layer_idx in range(layers):  # the original's retrieval_calculate, topk=1
                    for head_idx in range(heads):
                        values, idx = attention_maxtrix[layer_idx][0][head_idx][-1].topk(1)
                        for _v, i in zip(values, idx):
                            if s <= i < e and inp.item() == prompt_ids[i].item():
                                retrieval_score[layer_idx][head_idx][0] += 1 / (e - s)
                                retrieval_score[layer_idx][head_idx][1] += step_token
                                break
        finally:
            cfg._attn_implementation = saved
    return out_ids, retrieval_score


def decode_steps(model, prompt_ids, steps: int, rounds: int, batch_rows: int = 0):
    """Prefill seconds, and per-step seconds of plain vs probed decode steps (interleaved)."""
    import torch
    from transformers import DynamicCache

    from retrieval_head import ArgmaxProbe, intervene
    from retrieval_head.core.decode import cache_kwarg, prefill

    ids = torch.tensor([prompt_ids], device=model.device)
    t = time.perf_counter()
    cache = prefill(model, ids[:, :-1], cache=DynamicCache(config=model.config))  # what generate uses
    prefill_s = time.perf_counter() - t
    base, key, tok_id = cache.get_seq_length(), cache_kwarg(model), ids[:, -1:]
    times = {"plain": [], "probe": []}

    def run(kind):
        ctx = intervene(model, probe=ArgmaxProbe()) if kind == "probe" else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            for _ in range(steps):
                t0 = time.perf_counter()
                model(input_ids=tok_id, use_cache=True, **{key: cache})
                times[kind].append(time.perf_counter() - t0)
        cache.crop(-(cache.get_seq_length() - base))

    run("plain"), run("probe")  # warm-up
    times = {"plain": [], "probe": []}
    for r in range(rounds):
        for kind in (("plain", "probe") if r % 2 == 0 else ("probe", "plain")):
            run(kind)
    batch3 = None
    if batch_rows:  # for the profile: one plain step of `batch_rows` rows (conditions decoded as a batch)
        cache.batch_repeat_interleave(batch_rows)
        inp, bt = tok_id.expand(batch_rows, 1).contiguous(), []
        with torch.no_grad():
            for _ in range(steps + 2):
                t0 = time.perf_counter()
                model(input_ids=inp, use_cache=True, **{key: cache})
                bt.append(time.perf_counter() - t0)
        batch3 = statistics.median(bt[2:])
    return prefill_s, statistics.median(times["plain"]), statistics.median(times["probe"]), batch3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", nargs="+", default=["1000 2000"], help='context lengths: "1000 2000" or 1000 2000')
    ap.add_argument("--depths", nargs="+", default=["10 50 90"], help='depth percents: "10 50 90" or 10 50 90')
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a small shared machine)")
    ap.add_argument("--out", default=None, help="results file (default docs/results.md; --quick: none)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: one length, one depth, few steps")
    ap.add_argument("--steps", type=int, default=40, help="decode steps per run for item 3")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved runs per kind for item 3")
    ap.add_argument("--mem-repeats", type=int, default=2, help="fresh processes per memory measurement")
    args = ap.parse_args()
    args.lengths, args.depths = ints(" ".join(args.lengths)), ints(" ".join(args.depths))
    if args.quick:
        if "--lengths" not in " ".join(sys.argv):
            args.lengths = [300]
        if "--depths" not in " ".join(sys.argv):
            args.depths = [50]
        args.steps, args.rounds, args.mem_repeats = 8, 2, 1
    out = args.out if args.out or args.quick else str(BENCH.parent / "docs" / "results.md")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import detection_overhead as dov  # noqa: E402  (bench/ helpers: generate, trial, cpu_peak, write_section)
    import torch
    import transformers

    from retrieval_head import DetectSettings, ModelSpec, detect, load_model
    from retrieval_head.core.decode import greedy_decode, stop_token_mask
    from retrieval_head.core.intervene import HeadMask
    from retrieval_head.experiments.compress import keep_conditions
    from retrieval_head.experiments.mask import NiahSettings, make_conditions, run_niah
    from retrieval_head.experiments.sweep import plan
    from retrieval_head.inputs.prompt import Prompt
    from retrieval_head.models.shape import ModelShape

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    model, tok, info = load_model(ModelSpec())
    cuda = next(model.parameters()).is_cuda
    lengths, depths = sorted(set(args.lengths)), sorted(set(args.depths))
    Lmax = lengths[-1]
    settings = DetectSettings(context_lengths=tuple(lengths), depth_percents=tuple(depths))
    shape = ModelShape.of(model)
    p = plan(tok, shape, settings)
    stop = stop_token_mask(model, tok)
    needle0 = p.needles[0]
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa

    # Warm-up of every code path on a short prompt (kernels, first-call overheads).
    full = p.haystacks.for_needle(needle0).build(needle0, min(lengths), depths[0])
    short = Prompt(full.ids[:64], (1, 2), 0, 0)
    dov.trial(model, tok, short, needle0, stop), dov.generate(model, tok, short.ids, 2)
    original_trial(model, tok, short, 2)
    half = torch.arange(shape.num_layers * shape.num_heads).reshape(shape.grid) % 2 == 0
    for phase in STREAM_PHASES:  # item 6's paths: streamed decode steps, a streamed prefill
        greedy_decode(model, tok, short.ids, stop, 2, mask=HeadMask(half, "stream", phase, SINK, 16))
    log("warm")

    # 1. Detection sweep vs the floor, with its defaults (prefix reuse + batched decoding) and
    #    with each lever alone / none; 5. the original algorithm on the same prompts.
    dets, outcome = {}, {}
    for name, levers in VARIANTS.items():
        c = Clock()
        with c():
            r = detect(model, tok, dataclasses.replace(settings, **levers), progress=False, checked=p)
        dets[name] = (c, r)
        outcome[name] = {trial_key(t): (t["response_ids"], t["head_scores"]) for t in r.trials}
        log(f"detect {name}: {c.wall:.1f}s, {len(r.trials)} trials; {r.stats}")
    det, result = dets["default"]
    identical = all(o == outcome["default"] for o in outcome.values())
    det_floor, orig = Clock(), Clock()
    agree = [0, 0]
    by_id = {n.needle_id: n for n in p.needles}
    for i, rec in enumerate(result.trials):
        needle = by_id[rec["needle_id"]]
        prompt = p.haystacks.for_needle(needle).build(needle, rec["context_length"], rec["depth_percent"])
        n = len(rec["response_ids"])
        for kind in (("floor", "orig") if i % 2 == 0 else ("orig", "floor")):
            if kind == "floor":
                with det_floor():
                    dov.generate(model, tok, prompt.ids, n)
            else:
                with orig():
                    o_ids, _ = original_trial(model, tok, prompt, n)
                agree[0] += o_ids == rec["response_ids"]
                agree[1] += 1
    log(f"detect floor {det_floor.wall:.1f}s, original {orig.wall:.1f}s")

    # 2. Masked NIAH: none / top-K / random-K from item 1's scores, needle 0.
    scores = result.mean_scores()
    conds = make_conditions("bench", [0, K_HEADS, -K_HEADS], scores, "uniform", "decode", [0], False)
    builder = p.haystacks.for_needle(needle0)
    niah_st = NiahSettings(context_lengths=tuple(lengths), depth_percents=tuple(depths),
                           max_new_tokens=settings.max_new_tokens, needle_id=0)
    # Needle 0 of the same plan: its checks passed, its haystack is tokenized (outside the clock).
    niah_plan = dataclasses.replace(p, needles=[needle0])
    niah, floor_memo = {}, {}
    niah_outcome, niah_stats = {}, {}
    for b, kw in NIAH_VARIANTS.items():
        st = dataclasses.replace(niah_st, **kw)
        c = Clock()
        with counted_prefills() as made, c():
            recs = run_niah(model, tok, st, conds, model_name="bench", progress=False, checked=niah_plan)
        niah_stats[b] = made[0]
        fl = Clock()
        cells = []
        for cond in conds:
            for r in recs[cond.folder]:
                L, d, n = r["context_length"], r["depth_percent"], len(r["response_ids"])
                if (L, d, n) not in floor_memo:
                    one = Clock()
                    with one():
                        dov.generate(model, tok, builder.build(needle0, L, d).ids, n)
                    floor_memo[(L, d, n)] = (one.wall, one.cpu)
                fl.wall += floor_memo[(L, d, n)][0]
                fl.cpu += floor_memo[(L, d, n)][1]
                cells.append((cond.kind, L, d, n, r["test_duration_seconds"], r["score"]))
        niah[b] = (c, fl, cells)
        niah_outcome[b] = {f: [(r["context_length"], r["depth_percent"], r["response_ids"]) for r in rs]
                           for f, rs in recs.items()}
        log(f"niah {b}: {c.wall:.1f}s vs floor {fl.wall:.1f}s")
    niah_identical = all(o == niah_outcome["default"] for o in niah_outcome.values())

    # 6. Streaming heads (compression): none / keep-top-K_KEEP / keep-random-K_KEEP (seed 0) from
    #    item 1's scores, sink + recent, on item 2's grid and needle with the scheduler's defaults;
    #    phase decode (one prefill per cell for all conditions) and phase all (one per streaming
    #    condition and cell, besides the unmasked one's). Against item 2's defaults row.
    none_cond = make_conditions("bench", [0], None, "uniform", "decode", [0], False)
    streaming = {}
    for phase in STREAM_PHASES:
        sconds = none_cond + keep_conditions("bench", [K_KEEP, -K_KEEP], scores, phase, [0], False, SINK, RECENT)
        c = Clock()
        with counted_prefills() as made, c():
            recs = run_niah(model, tok, niah_st, sconds, model_name="bench", progress=False, checked=niah_plan)
        per_cond = [(cond, statistics.fmean(r["score"] for r in recs[cond.folder]),
                     statistics.fmean(r["mask"].get("kv_kept", 1.0) for r in recs[cond.folder])) for cond in sconds]
        same_none = ([(r["context_length"], r["depth_percent"], r["response_ids"]) for r in recs[none_cond[0].folder]]
                     == niah_outcome["default"][conds[0].folder])
        streaming[phase] = (c, made[0], per_cond, same_none)
        log(f"streaming {phase}: {c.wall:.1f}s vs masked sweep {niah['default'][0].wall:.1f}s; "
            f"{made[0]['prefills']} prefills in {made[0]['passes']} passes")

    # 3. Decode step with the probe vs plain, at every length (the longest is the table row);
    #    the prefill times feed the profile.
    prof = {}
    for L in lengths:  # shorter lengths: profile only, fewer rounds
        ids = builder.build(needle0, L, 50).ids
        prof[L] = decode_steps(model, ids, args.steps, args.rounds if L == Lmax else max(1, args.rounds // 2),
                               batch_rows=len(conds) if L == Lmax else 0)
        log(f"L={L}: prefill {prof[L][0]:.2f}s, step plain {prof[L][1] * 1e3:.1f} ms, probe {prof[L][2] * 1e3:.1f} ms")

    # 4. Peak memory of one trial vs plain generate at the longest length (fresh processes).
    mrec = next((r for r in result.trials if r["needle_id"] == needle0.needle_id
                 and r["context_length"] == Lmax and r["depth_percent"] == 50), None)
    if mrec is None:
        mrec = dov.trial(model, tok, builder.build(needle0, Lmax, 50), needle0, stop)
    n_mem = len(mrec["response_ids"])
    mem = {"a": [], "b": []}
    mprompt = builder.build(needle0, Lmax, 50)
    for r in range(args.mem_repeats):
        for kind in ("ab" if r % 2 == 0 else "ba"):
            if cuda:
                mem[kind].append(dov.timed(kind, model, tok, mprompt, needle0, stop, n_mem, True)[2])
            else:
                mem[kind].append(dov.cpu_peak(kind, Lmax, n_mem, args.threads))
    log(f"memory: trial {mem['a']} MiB, generate {mem['b']} MiB")
    # The whole sweep, defaults vs independent trials (one fresh process each: a sweep is long).
    sweep_mem = {} if cuda else {k: dov.cpu_peak(k, Lmax, n_mem, args.threads, (lengths, depths))
                                 for k in ("sweep", "sweep0")}
    log(f"memory: whole sweep {sweep_mem} MiB")

    # ---- table ----
    rows = []

    def row(name, ours, floor, target, ours_cpu=None, floor_cpu=None, unit="s", note="baseline"):
        ratio = ours / floor
        met = "—" if target is None else ("yes" if ratio <= target else "**no**")
        cpu = f"{ours_cpu / floor_cpu:.3f}" if ours_cpu is not None else "—"
        f = (lambda v: f"{v:.1f}") if unit == "MiB" else (lambda v: f"{v:.4f}" if v < 1 else f"{v:.1f}")
        rows.append(f"| {name} | {f(ours)} | {f(floor)} | {ratio:.3f} | "
                    f"{note if target is None else f'<= {target}'} | {met} | {cpu} |")
        return ratio

    T = len(result.trials)
    for name, (c, _r) in dets.items():
        row(f"1. detection sweep ({T} trials: {len(p.needles)} needles x {len(lengths)} lengths x "
            f"{len(depths)} depths), {VARIANT_TEXT[name]}", c.wall, det_floor.wall,
            TARGETS["detect"] if name == "default" else None, c.cpu, det_floor.cpu, note="lever")

    for b, (c, fl, _cells) in niah.items():
        row(f"2. masked NIAH sweep (none/top-{K_HEADS}/random-{K_HEADS} x {len(lengths) * len(depths)} "
            f"cells), {NIAH_TEXT[b]}", c.wall, fl.wall, TARGETS["niah"] if b == "default" else None, c.cpu, fl.cpu,
            note="lever")
    _, plain_s, probe_s, batch_s = prof[Lmax]
    row(f"3. decode step at {Lmax} tokens, probe vs plain (median of {args.rounds} x {args.steps} steps, s)",
        probe_s, plain_s, TARGETS["step"])
    ma, mb = statistics.median(mem["a"]), statistics.median(mem["b"])
    row(f"4. peak memory, one trial vs generate at {Lmax} (N={n_mem}; MiB, median of "
        f"{args.mem_repeats} {'fresh processes' if not cuda else 'runs'})", ma, mb, TARGETS["mem"], unit="MiB")
    if sweep_mem:
        row(f"4b. peak memory, the whole detection sweep: defaults (decode batches up to "
            f"{result.stats['batch_tokens']} cached tokens) vs independent trials (MiB, one fresh process each)",
            sweep_mem["sweep"], sweep_mem["sweep0"], None, unit="MiB", note="info")
    row("5. original algorithm (eager + output_attentions + Python top-1 loop), same prompts",
        orig.wall, det_floor.wall, None, orig.cpu, det_floor.cpu)
    masked = niah["default"][0]
    for phase, (c, _, _, _) in streaming.items():
        row(f"6. streaming sweep (none / keep-top-{K_KEEP} / keep-random-{K_KEEP}, sink {SINK} + recent {RECENT}), "
            f"phase {phase} vs the masked NIAH sweep (defaults)", c.wall, masked.wall, None, c.cpu, masked.cpu,
            note="info")
    header = ["| quantity | ours s | floor s | ratio | target | met? | ratio (CPU time) |", "|---" * 7 + "|"]
    table = "\n".join(header + rows)

    # ---- profile: where the time goes ----
    pre = {L: prof[L][0] for L in lengths}
    ind, reuse, batch = (dets[k][0] for k in ("independent", "reuse", "batches"))
    rst, bst = dets["reuse"][1].stats, dets["batches"][1].stats
    Ns = [len(r["response_ids"]) for r in result.trials]
    det_prefill = sum(pre[r["context_length"]] for r in result.trials)
    det_decode_est = sum(len(r["response_ids"]) * prof[r["context_length"]][2] for r in result.trials)
    floor_decode_est = sum(len(r["response_ids"]) * prof[r["context_length"]][1] for r in result.trials)
    prof_lines = [
        "Prefill (one prompt, all tokens but the last) and one decode step, measured in item 3:",
        "",
        "| context | prefill s | plain step ms | probe step ms |",
        "|---|---|---|---|",
        *[f"| {L} | {pre[L]:.2f} | {prof[L][1] * 1e3:.1f} | {prof[L][2] * 1e3:.1f} |" for L in lengths],
        "",
        f"Plain decode step of {len(conds)} rows at {Lmax} (the batched conditions' step): {batch_s * 1e3:.1f} ms "
        f"= {batch_s / plain_s:.2f} x one row.",
        "",
        f"- Independent trials: {T} trials, N = {min(Ns)}..{max(Ns)} new tokens (mean {statistics.mean(Ns):.1f}). "
        f"One prefill per trial costs {det_prefill:.1f} s = {det_prefill / ind.wall:.0%} of that sweep's "
        f"{ind.wall:.1f} s and {det_prefill / det_floor.wall:.0%} of the floor's {det_floor.wall:.1f} s; "
        f"N probed steps ~ {det_decode_est:.1f} s ({det_decode_est / ind.wall:.0%}), N plain steps ~ "
        f"{floor_decode_est:.1f} s of the floor (estimates from item 3's per-length timings).",
        f"- Prefix reuse: the sweep prefilled {rst['prefilled_tokens']} of {rst['prompt_tokens']} prompt tokens "
        f"({rst['prefilled_tokens'] / rst['prompt_tokens']:.0%}; the tokens after each needle cost more than the "
        f"average token, as they attend to the whole prefix); alone it takes {reuse.wall:.1f} s = "
        f"{reuse.wall / ind.wall:.2f} of independent trials.",
        f"- Batched decoding: trials of one length decoded together, {len(bst['decode_batches'])} batches of "
        f"{bst['decode_batches']} rows (budget {bst['batch_tokens']} cached tokens); a decode step reads every "
        f"weight once for all rows. Alone it takes {batch.wall:.1f} s = {batch.wall / ind.wall:.2f} of independent "
        f"trials.",
        f"- Both (the defaults): {det.wall:.1f} s = {det.wall / ind.wall:.2f} of independent trials, "
        f"{len(result.stats['decode_batches'])} decode batches of {result.stats['decode_batches']} rows. Response ids "
        f"and head scores of every trial are identical in all four variants: {'yes' if identical else '**NO**'}.",
        f"- Original algorithm: {orig.wall:.1f} s = the same {det_prefill:.1f} s of prefill plus "
        f"{orig.wall - det_prefill:.1f} s of eager decode steps with attention maps and the Python loop "
        f"({(orig.wall - det_prefill) / sum(Ns) * 1e3:.0f} ms per step vs ~"
        f"{det_decode_est / sum(Ns) * 1e3:.0f} ms per probed step). Its greedy tokens equal ours in "
        f"{agree[0]} of {agree[1]} trials. Ours / original = {det.wall / orig.wall:.3f}.",
    ]
    niah_prefill = sum(pre[L] for L in lengths for _ in depths)
    fl_wall = next(iter(niah.values()))[1].wall
    prof_lines.append(
        f"- Masked NIAH: the floor pays {len(conds)} prefills per cell (~{len(conds) * niah_prefill:.1f} s of its "
        f"{fl_wall:.1f} s), so one prefill per cell with free decoding would give ~{niah_prefill / fl_wall:.2f}. "
        + "; ".join(f"{NIAH_TEXT[b]}: {c.wall:.1f} s" for b, (c, fl, cells) in niah.items())
        + f". Responses identical in all four variants: {'yes' if niah_identical else '**NO**'}. Its defaults ran "
        f"{counts(niah_stats['default'])} "
        f"({niah_stats['default']['prefilled_tokens']} of {niah_stats['default']['prompt_tokens']} prompt tokens "
        f"prefilled, after prefix reuse), decode batches of {niah_stats['default']['decode_batches']} rows.")
    for phase, (c, st, per_cond, same_none) in streaming.items():
        prof_lines.append(
            f"- Streaming, phase {phase} (item 6; sink {SINK} + recent {RECENT}): {c.wall:.1f} s = "
            f"{c.wall / masked.wall:.2f} x the masked sweep's defaults; {counts(st)} "
            f"({st['prefilled_tokens']} of {st['prompt_tokens']} prompt tokens prefilled, "
            f"after prefix reuse), decode batches of {st['decode_batches']} rows. Mean score / KV cache kept: "
            + "; ".join(f"{cond.label()}: {score:.1f} / {100 * kept:.1f}%" for cond, score, kept in per_cond)
            + f". The unmasked condition's responses equal item 2's: {'yes' if same_none else '**NO**'}.")
    profile = "\n".join(prof_lines)

    print(table)
    print()
    print(profile)
    load1 = os.getloadavg()
    total = time.perf_counter() - t_start
    if out is None:
        log(f"--quick: nothing written (pass --out FILE to write); total {total:.0f}s")
        return
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py " + shlex.join(sys.argv[1:])
    body = (
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {info['device']} ({info['model_path']}, "
        f"{info['dtype']}, attention {info['attn_implementation']}); torch threads: {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}. **All rows were measured in the same run** "
        f"({total / 60:.1f} min; machine as in the header; load average (1 min) {load0[0]:.1f} before, "
        f"{load1[0]:.1f} after, on {os.cpu_count()} cores). Grid: lengths "
        f"{' '.join(map(str, lengths))}, depths {' '.join(map(str, depths))}, all {len(p.needles)} default needles "
        f"(items 1 and 5), needle 0 (items 2 and 6).\n\n"
        f"Floor = `model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False)` on each same "
        f"prompt, with N = the number of tokens that trial or condition generated. Items 1, 2, 5 and 6 are sums "
        f"of wall seconds over the sweep (one warm-up on a 64-token prompt before anything); item 1's floor "
        f"and item 5 were interleaved prompt by prompt. Item 3: per-step seconds, `model(input_ids=tok, cache=cache)` "
        f"inside vs outside `intervene(model, probe=ArgmaxProbe())` on a prefilled `DynamicCache` cropped "
        f"back after each run. Item 4: peak RSS increase of one detection trial (`detection_overhead.trial`: one "
        f"`Job` through the `Scheduler` with no levers, then `detect.trial_record`) vs one generate in fresh processes "
        f"(`detection_overhead.cpu_peak`, glibc's mmap threshold pinned at 64 KiB so the peak follows live memory). "
        f"Item 6: "
        f"`run_niah` with the defaults under none / keep-top-{K_KEEP} / keep-random-{K_KEEP} (seed 0; "
        f"`compress.keep_conditions`, every head not kept streamed with sink {SINK} + recent {RECENT}), its "
        f"\"floor\" column being item 2's defaults row (the masked sweep on the same grid, same run). "
        f"Ratio (CPU time) = process CPU seconds, less sensitive to the other jobs.\n\n{table}\n\n"
        f"### Where the time goes\n\n{profile}\n\n"
        f"{memory_note(model, result.stats['batch_tokens'])}\n\n"
        f"Reproduce: `{cmd.strip()}` ({total / 60:.0f} min here; the levers' identity is also tested in "
        f"`tests/test_prefix.py` and `tests/test_batched.py`)\n")
    dov.SECTION = SECTION  # write_section() reads the module constant; it takes no section argument
    dov.write_section(out, body, info)
    log(f"wrote {SECTION!r} to {out}; total {total:.0f}s")


if __name__ == "__main__":
    main()
