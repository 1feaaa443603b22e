"""Whole sweeps vs the naive floor (issue C): detection, masked NIAH, probe step, memory, original.

On the default model (SmolLM2-135M-Instruct) at CPU-sized lengths, one run measures, on the
same machine and in the same process (memory: fresh child processes):

  1. Detection sweep: ``detect(model, tok, DetectSettings(context_lengths, depth_percents))``
     over all default needles x lengths x depths, against the naive floor: the sum over the
     same prompts of ``model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False)``
     with N = that trial's number of new tokens (``len(response_ids)``). Target <= 0.75.
  2. Masked-NIAH sweep: none / top-10 / random-10 (head scores = item 1's ``mean_scores()``),
     ``run_niah`` on needle 0 over the same lengths x depths, against the sum of plain
     generate for every (condition, cell) prompt with that condition's N. Measured with
     ``NiahSettings.batch_conditions`` False and True where that field exists. Target <= 0.5.
  3. One decode step under ``intervene(model, probe=ArgmaxProbe())`` against a plain decode
     step, at the longest length (prefilled ``DynamicCache``, K steps per run, the cache
     cropped back between runs, runs interleaved with alternating order; medians of the
     per-step times). Target <= 1.05.
  4. Peak memory of one detection trial (``run_trial``) against plain generate at the longest
     length, each in fresh processes (``detection_overhead.cpu_peak``; CUDA: peak allocated).
     Target <= 1.1.
  5. The original algorithm, as a baseline row: the same detection prompts prefilled through
     SDPA, then N decode steps with the model switched to eager and ``output_attentions=True``,
     and the per-head top-1 computed by a Python loop over layers and heads (the original's
     ``retrieval_calculate``); its time against the same floor.

Times are wall seconds (process CPU seconds in an extra column: less sensitive to other jobs
on a shared machine). A profile (prefill vs decode share, per-condition decode cost) follows
the table. The section "## Sweeps vs the naive floor (issue C)" of ``--out`` is replaced
(the other sections are kept); ``--quick`` runs a tiny grid and writes only with ``--out``.

Run (from the repo root; one heavy process at a time on a small shared machine)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py --quick                 # smoke run, ~2 min
    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py                         # lengths 1000 2000, depths 10 50 90
    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py --lengths "1000 2000" --depths "10 90" --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
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

SECTION = "## Sweeps vs the naive floor (issue C)"
K_HEADS = 10
TARGETS = {"detect": 0.75, "niah": 0.5, "step": 1.05, "mem": 1.1}


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
    from retrieval_head.decode import cache_kwarg, prefill

    cfg = model.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
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
                        for v, i in zip(values, idx):
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
    from retrieval_head import ArgmaxProbe, intervene
    from retrieval_head.decode import cache_kwarg, prefill

    ids = torch.tensor([prompt_ids], device=model.device)
    t = time.perf_counter()
    cache = prefill(model, ids[:, :-1])
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
            for i in range(steps + 2):
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
    ap.add_argument("--out", default=None, help="results file (default bench/RESULTS.md; --quick: none)")
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
    out = args.out if args.out or args.quick else str(BENCH / "RESULTS.md")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    import transformers
    import detection_overhead as dov  # noqa: E402  (bench/ helpers: generate, trial, cpu_peak, write_section)
    from retrieval_head import DetectSettings, ModelSpec, detect, load_model
    from retrieval_head.decode import stop_token_mask
    from retrieval_head.detect import plan
    from retrieval_head.niah import NiahSettings, make_conditions, run_niah
    from retrieval_head.prompt import Prompt

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    model, tok, info = load_model(ModelSpec())
    cuda = next(model.parameters()).is_cuda
    lengths, depths = sorted(set(args.lengths)), sorted(set(args.depths))
    Lmax = lengths[-1]
    settings = DetectSettings(context_lengths=tuple(lengths), depth_percents=tuple(depths))
    p = plan(model, tok, settings)
    stop = stop_token_mask(model, tok)
    needle0 = p.needles[0]
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa

    # Warm-up of every code path on a short prompt (kernels, first-call overheads).
    full = p.haystacks.for_needle(needle0).build(needle0, min(lengths), depths[0])
    short = Prompt(full.ids[:64], (1, 2), 0, 0)
    dov.trial(model, tok, short, needle0, stop), dov.generate(model, tok, short.ids, 2)
    original_trial(model, tok, short, 2)
    log("warm")

    # 1. Detection sweep vs the floor; 5. the original algorithm on the same prompts.
    det = Clock()
    with det():
        result = detect(model, tok, settings, progress=False, checked=p)
    log(f"detect: {det.wall:.1f}s, {len(result.trials)} trials")
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
    batch_modes = [False, True] if hasattr(NiahSettings(), "batch_conditions") else [None]
    niah, floor_memo = {}, {}
    for b in batch_modes:
        st = NiahSettings(max_new_tokens=settings.max_new_tokens, model_name="bench",
                          **({} if b is None else {"batch_conditions": b}))
        c = Clock()
        with c():
            recs = run_niah(model, tok, builder, needle0, lengths, depths, conds, stop, st, progress=False)
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
        log(f"niah batch_conditions={b}: {c.wall:.1f}s vs floor {fl.wall:.1f}s")

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

    # ---- table ----
    rows = []

    def row(name, ours, floor, target, ours_cpu=None, floor_cpu=None, unit="s"):
        ratio = ours / floor
        met = "—" if target is None else ("yes" if ratio <= target else "**no**")
        cpu = f"{ours_cpu / floor_cpu:.3f}" if ours_cpu is not None else "—"
        f = (lambda v: f"{v:.1f}") if unit == "MiB" else (lambda v: f"{v:.4f}" if v < 1 else f"{v:.1f}")
        rows.append(f"| {name} | {f(ours)} | {f(floor)} | {ratio:.3f} | "
                    f"{'baseline' if target is None else f'<= {target}'} | {met} | {cpu} |")
        return ratio

    T = len(result.trials)
    row(f"1. detection sweep ({T} trials: {len(p.needles)} needles x {len(lengths)} lengths x "
        f"{len(depths)} depths)", det.wall, det_floor.wall, TARGETS["detect"], det.cpu, det_floor.cpu)

    for b, (c, fl, cells) in niah.items():
        tag = "" if b is None else f", batch_conditions={b}"
        row(f"2. masked NIAH sweep (none/top-{K_HEADS}/random-{K_HEADS} x {len(lengths) * len(depths)} "
            f"cells{tag})", c.wall, fl.wall, TARGETS["niah"], c.cpu, fl.cpu)
    _, plain_s, probe_s, batch_s = prof[Lmax]
    row(f"3. decode step at {Lmax} tokens, probe vs plain (median of {args.rounds} x {args.steps} steps, s)",
        probe_s, plain_s, TARGETS["step"])
    ma, mb = statistics.median(mem["a"]), statistics.median(mem["b"])
    row(f"4. peak memory, one trial vs generate at {Lmax} (N={n_mem}; MiB, median of "
        f"{args.mem_repeats} {'fresh processes' if not cuda else 'runs'})", ma, mb, TARGETS["mem"], unit="MiB")
    row("5. original algorithm (eager + output_attentions + Python top-1 loop), same prompts",
        orig.wall, det_floor.wall, None, orig.cpu, det_floor.cpu)
    header = ["| quantity | ours s | floor s | ratio | target | met? | ratio (CPU time) |", "|---" * 7 + "|"]
    table = "\n".join(header + rows)

    # ---- profile: where the time goes ----
    pre = {L: prof[L][0] for L in lengths}
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
        f"- Detection: {T} trials, N = {min(Ns)}..{max(Ns)} new tokens (mean {statistics.mean(Ns):.1f}). "
        f"One prefill per trial costs {det_prefill:.1f} s = {det_prefill / det.wall:.0%} of the sweep's "
        f"{det.wall:.1f} s and {det_prefill / det_floor.wall:.0%} of the floor's {det_floor.wall:.1f} s; "
        f"N probed steps ~ {det_decode_est:.1f} s ({det_decode_est / det.wall:.0%}), N plain steps ~ "
        f"{floor_decode_est:.1f} s of the floor; the rest (generate's per-step overhead in the floor; "
        f"scoring, ROUGE, prompt building, stop-mask and plan checks in ours) is "
        f"{det.wall - det_prefill - det_decode_est:.1f} s ours vs {det_floor.wall - det_prefill - floor_decode_est:.1f} s floor "
        f"(estimates from item 3's per-length timings, taken at another moment: noise of a few % either way). "
        f"run_trial itself took {sum(r['duration_s'] for r in result.trials):.1f} s of the {det.wall:.1f} s "
        f"(the rest: plan, stop mask, prompt building).",
        f"- Original algorithm: {orig.wall:.1f} s = the same {det_prefill:.1f} s of prefill plus "
        f"{orig.wall - det_prefill:.1f} s of eager decode steps with attention maps and the Python loop "
        f"({(orig.wall - det_prefill) / sum(Ns) * 1e3:.0f} ms per step vs ~"
        f"{det_decode_est / sum(Ns) * 1e3:.0f} ms per probed step). Its greedy tokens equal ours in "
        f"{agree[0]} of {agree[1]} trials. Ours / original = {det.wall / orig.wall:.3f}.",
    ]
    for b, (c, fl, cells) in niah.items():
        ncell = len(lengths) * len(depths)
        niah_prefill = sum(pre[L] for L in lengths for _ in depths)
        dec = {}
        for kind, L, d, n, dur, score in cells:
            dec.setdefault(kind, []).append((dur, n, score))
        per = "; ".join(f"{k}: {sum(x[0] for x in v):.1f} s decode over {sum(x[1] for x in v)} tokens "
                        f"({sum(x[0] for x in v) / max(1, sum(x[1] for x in v)) * 1e3:.0f} ms/token, mean score "
                        f"{statistics.mean(x[2] for x in v):.0f})" for k, v in dec.items())
        decode_total = sum(x[4] for x in cells)
        tag = "" if b is None else f" (batch_conditions={b})"
        prof_lines.append(
            f"- Masked NIAH{tag}: {c.wall:.1f} s = {ncell} shared prefills (~{niah_prefill:.1f} s, "
            f"{niah_prefill / c.wall:.0%}) + decode {decode_total:.1f} s ({decode_total / c.wall:.0%}) + other "
            f"{c.wall - niah_prefill - decode_total:.1f} s. Per condition: {per}. The floor pays "
            f"{len(conds)} prefills per cell (~{len(conds) * niah_prefill:.1f} s of its {fl.wall:.1f} s), so the "
            f"ratio cannot go below ~{niah_prefill / fl.wall:.2f} "
            f"with one prefill per cell and free decoding.")
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
        f"{load1[0]:.1f} after, on {os.cpu_count()} cores shared with other jobs). Grid: lengths "
        f"{' '.join(map(str, lengths))}, depths {' '.join(map(str, depths))}, all {len(p.needles)} default needles "
        f"(items 1 and 5), needle 0 (item 2).\n\n"
        f"Floor = `model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False)` on each same "
        f"prompt, with N = the number of tokens that trial or condition generated. Items 1, 2 and 5 are sums "
        f"of wall seconds over the sweep (one warm-up on a 64-token prompt before anything); item 1's floor "
        f"and item 5 were interleaved prompt by prompt. Item 3: per-step seconds, `model(input_ids=tok, cache=cache)` "
        f"inside vs outside `intervene(model, probe=ArgmaxProbe())` on a prefilled `DynamicCache` cropped "
        f"back after each run. Item 4: peak RSS increase of one `run_trial` vs one generate in fresh processes "
        f"(`detection_overhead.cpu_peak`; glibc makes these vary by ~+-30%). Ratio (CPU time) = process CPU "
        f"seconds, less sensitive to the other jobs.\n\n{table}\n\n### Where the time goes\n\n{profile}\n\n"
        f"Reproduce: `{cmd.strip()}`\n")
    dov.SECTION = SECTION  # write_section() reads the module constant; it takes no section argument
    dov.write_section(out, body, info)
    log(f"wrote {SECTION!r} to {out}; total {total:.0f}s")


if __name__ == "__main__":
    main()
