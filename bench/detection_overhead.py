"""Detection-trial overhead: one probed detection trial vs. plain ``model.generate``.

For each context length this builds a real detection prompt (needle 0 of the default
needles, depth 50%) and measures, on the default model (SmolLM2-135M-Instruct):

  (a) ``trial(...)`` -- one detection trial as the sweep runs it with no levers: one
      ``schedule.Job`` through ``Scheduler(..., Levers(prefix_reuse=False, batch_tokens=0))``
      (prefill + greedy decode under the ArgmaxProbe), then ``detect.trial_record`` (head
      scoring and the ROUGE check; max_new_tokens=50, threshold 50, score "count");
  (b) ``model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False)`` on the
      same prompt ids, with N = the number of tokens (a) generated: the naive floor.

Time: one warm-up of each, then ``--repeats`` rounds, (a) and (b) interleaved in the same
process (order alternating per round); the median wall time and the median process CPU
time (all threads; less sensitive to other jobs on a shared machine) are reported, and
ratio = (a)/(b). Target: ratio <= 1.10.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the
call. On CPU, each measurement runs once in a fresh ``spawn`` child that loads the model,
builds the prompt, warms both paths up on a 64-token prefix, then resets the kernel's
peak-RSS mark (``/proc/self/clear_refs`` = 5) and reports VmHWM - VmRSS around the call
(fallback: ``ru_maxrss`` delta, which can hide peaks below the model-load peak). The children
run with glibc's mmap threshold pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed
tensors return to the system and the peak follows live memory; with glibc's default dynamic
threshold the same measurement varied by about +-30% from process to process.

Run (from the repo root)::

    .venv/bin/python bench/detection_overhead.py                     # lengths 1000 2000, 3 repeats
    .venv/bin/python bench/detection_overhead.py --lengths 1000 4000 --repeats 5 --threads 2

On a small machine shared with other jobs, ``--threads 1`` avoids OpenMP oversubscription
(2 threads on 2 busy cores made single runs up to ~10x slower and the ratio pure noise).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

SECTION = "## Detection trial vs plain generate"
MAX_NEW, ROUGE, MODE = 50, 50, "count"
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def setup(threads, lengths):
    from retrieval_head import ModelSpec, load_model
    from retrieval_head.core.decode import stop_token_mask
    from retrieval_head.experiments.sweep import Haystacks
    from retrieval_head.inputs.haystack import load_needles
    from retrieval_head.inputs.prompt import uses_chat_template

    if threads:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    model, tok, info = load_model(ModelSpec())
    needle = load_needles()[0]
    builder = Haystacks(tok, uses_chat_template(tok, "auto")).for_needle(needle)
    prompts = {L: builder.build(needle, L, 50) for L in lengths}
    return model, tok, info, needle, prompts, stop_token_mask(model, tok)


def trial(model, tok, prompt, needle, stop, key=None):
    """One detection trial, independent (no prefix reuse, no batch): what the scheduler does
    for one job under the probe, then the trial's record (head scores, ROUGE check).
    ``key``: its ``TrialKey`` (default: needle, prompt length, depth 50)."""
    from retrieval_head.engine.scheduler import Job, Levers, Scheduler
    from retrieval_head.experiments.detect import DetectSettings, trial_record
    from retrieval_head.experiments.sweep import TrialKey
    from retrieval_head.models.shape import ModelShape

    st = DetectSettings(max_new_tokens=MAX_NEW, rouge_threshold=ROUGE, score=MODE)  # no grid: only the record's
    key = key or TrialKey(needle.needle_id, len(prompt.ids), 50)
    scheduler = Scheduler(model, ModelShape.of(model), stop, MAX_NEW, Levers(prefix_reuse=False, batch_tokens=0))
    (row,) = scheduler.run([Job(key, prompt)], probe=True)
    return trial_record(tok, row, needle, st)


def generate(model, tok, ids, n):
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    assert out.shape[1] - x.shape[1] == n
    return out


def run(kind, model, tok, prompt, needle, stop, n, grid=None):
    """kind a: one trial; b: one generate; sweep: a whole default detection sweep over ``grid``
    = (lengths, depths); sweep0: the same sweep as independent trials (no prefix reuse, no batches)."""
    if kind in ("sweep", "sweep0"):
        from retrieval_head import DetectSettings, detect
        levers = {} if kind == "sweep" else dict(prefix_reuse=False, batch_tokens=0)
        return detect(model, tok, DetectSettings(context_lengths=tuple(grid[0]), depth_percents=tuple(grid[1]),
                                                 **levers), progress=False)
    return trial(model, tok, prompt, needle, stop) if kind == "a" else generate(model, tok, prompt.ids, n)


def kv_cache_mib(model, tokens):
    from retrieval_head.models.shape import ModelShape
    return ModelShape.of(model).kv_bytes_per_token(model.dtype.itemsize) * tokens / 2**20


def _status_kb(field):
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def cpu_peak_child(kind, L, n, threads, q, grid=None):
    """Fresh process: peak RSS increase (MiB) of one measurement."""
    from retrieval_head.inputs.prompt import Prompt
    model, tok, _, needle, prompts, stop = setup(threads, [L])
    p = prompts[L]
    short = Prompt(p.ids[:64], (1, 2), 0, 0)  # warm-up of both code paths, tiny tensors
    trial(model, tok, short, needle, stop), generate(model, tok, short.ids, 2)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
        run(kind, model, tok, p, needle, stop, n, grid)
        q.put((_status_kb("VmHWM") - base) / 1024)
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(kind, model, tok, p, needle, stop, n, grid)
        q.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)


def cpu_peak(kind, L, n, threads, grid=None):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=cpu_peak_child, args=(kind, L, n, threads, q, grid))
    # glibc's mmap threshold pinned at 64 KiB in the child: freed tensors go back to the system,
    # so the peak RSS follows live memory (with the default, dynamic threshold the same
    # measurement varied by +-30% from process to process).
    saved = os.environ.get(MMAP_ENV)
    os.environ[MMAP_ENV] = "65536"
    try:
        proc.start()
    finally:
        if saved is None:
            os.environ.pop(MMAP_ENV)
        else:
            os.environ[MMAP_ENV] = saved
    val = q.get()
    proc.join()
    return val


def timed(kind, model, tok, prompt, needle, stop, n, cuda):
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    w, c = time.perf_counter(), time.process_time()
    run(kind, model, tok, prompt, needle, stop, n)
    if cuda:
        torch.cuda.synchronize()
    w, c = time.perf_counter() - w, time.process_time() - c
    mem = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
    return w, c, mem


def machine_header(info):
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"# Benchmarks\n\nMachine: {cpu.group(1) if cpu else platform.processor()}, "
            f"{mp.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}; first written {datetime.date.today()}.\n"
            f"Model: {info['model_path']} ({info['dtype']}, {info['device']}, "
            f"attention {info['attn_implementation']}).\n")


def write_section(path, body, info):
    path = Path(path)
    text = path.read_text() if path.exists() else machine_header(info)
    pat = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{SECTION}\n\n{body}\n"
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mem-repeats", type=int, default=2, help="fresh processes per CPU memory measurement")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results.md"))
    args = ap.parse_args()
    load0 = os.getloadavg()
    model, tok, info, needle, prompts, stop = setup(args.threads, args.lengths)
    cuda = next(model.parameters()).is_cuda
    rows = []
    for L in args.lengths:
        n = len(trial(model, tok, prompts[L], needle, stop)["response_ids"])  # warm-up (a), and N
        generate(model, tok, prompts[L].ids, n)  # warm-up (b)
        res = {"a": [], "b": []}
        for r in range(args.repeats):
            for kind in ("ab" if r % 2 == 0 else "ba"):
                res[kind].append(timed(kind, model, tok, prompts[L], needle, stop, n, cuda))
        med = {k: [statistics.median(x[i] for x in v) for i in range(2)] + [min(x[0] for x in v)]
               for k, v in res.items()}
        if cuda:
            mem = {k: [max(x[2] for x in v)] for k, v in res.items()}
        else:
            mem = {"a": [], "b": []}
            for r in range(args.mem_repeats):
                for kind in ("ab" if r % 2 == 0 else "ba"):
                    mem[kind].append(cpu_peak(kind, L, n, args.threads))
        rows.append((L, n, med, mem, kv_cache_mib(model, L + n)))
        print(f"L={L} N={n} a={med['a'][0]:.2f}s b={med['b'][0]:.2f}s ratio={med['a'][0] / med['b'][0]:.3f}",
              file=sys.stderr)
    memkind = "CUDA max_memory_allocated increase" if cuda else "peak RSS increase, fresh process"
    lines = ["| context | new tokens N | trial (a) wall s | generate (b) wall s | ratio a/b (wall) "
             "| ratio a/b (CPU time) | ratio a/b (min wall) | (a) peak MiB | (b) peak MiB | KV cache MiB |",
             "|---" * 10 + "|"]
    fmt = lambda v: f"{statistics.median(v):.0f}" + (f" ({min(v):.0f}-{max(v):.0f})" if len(v) > 1 else "")  # noqa
    for L, n, med, mem, kv in rows:
        (aw, ac, am), (bw, bc, bm) = med["a"], med["b"]
        lines.append(f"| {L} | {n} | {aw:.2f} | {bw:.2f} | {aw / bw:.3f} | {ac / bc:.3f} | {am / bm:.3f} "
                     f"| {fmt(mem['a'])} | {fmt(mem['b'])} | {kv:.0f} |")
    table = "\n".join(lines)
    print(table)
    worst = max(m["a"][0] / m["b"][0] for _, _, m, _, _ in rows)
    worst_cpu = max(m["a"][1] / m["b"][1] for _, _, m, _, _ in rows)
    load = max(load0[0], os.getloadavg()[0])
    busy = (f"**Warning:** load average {load:.1f} on {os.cpu_count()} cores with {torch.get_num_threads()} torch "
            "threads: OpenMP oversubscription dominates these times; rerun with `--threads 1`.\n\n"
            if not cuda and torch.get_num_threads() > 1 and load > os.cpu_count() else "")
    cmd = ".venv/bin/python bench/detection_overhead.py " + " ".join(sys.argv[1:])
    body = (f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {info['device']} "
            f"(torch threads: {torch.get_num_threads()}). (a) = one independent detection trial (one `Job` "
            f"through the `Scheduler` with no levers, under the probe, then `detect.trial_record`: scoring, ROUGE; "
            f"max_new_tokens={MAX_NEW}), (b) = `model.generate` with exactly N new tokens on the same prompt "
            f"(needle 0, depth 50). Both were measured in the same run, interleaved (order alternating), "
            f"after one warm-up each; times and ratios are of the medians of {args.repeats} repeats "
            f"(CPU time = process time, all threads; min wall = ratio of the fastest runs). Memory: {memkind}"
            f"{'' if cuda else f', median (min-max) of {args.mem_repeats} processes each'}; KV cache = the "
            f"float K/V of prompt + N tokens, for scale. Load average (1 min) {load0[0]:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after.\n\n"
            f"{table}\n\n{busy}Target ratio <= 1.10: {'holds' if worst <= 1.10 else 'NOT met'} "
            f"on wall medians (worst ratio {worst:.3f}); worst CPU-time ratio {worst_cpu:.3f}.\n\n"
            f"Reproduce: `{cmd.strip()}`\n")
    write_section(args.out, body, info)


if __name__ == "__main__":
    main()
