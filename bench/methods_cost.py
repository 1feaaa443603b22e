"""The cost of each head-identification method on the embedded SmolLM2, in one process.

Runs, interleaved per round (order alternating), the same detection grid under
``--method retrieval``, ``retrieval query-focus`` and ``retrieval needle-mass`` (each a full
sweep: prefix reuse and batching as the defaults), and ``induction echo`` (one forward pass),
and reports the median wall and process-CPU seconds of each and the ratio of each sweep to the
retrieval-only one. The three haystack methods share one sweep in
``retrieval_head_detection.py --method ...``; the ratios say what each adds to it.

    .venv/bin/python bench/methods_cost.py --threads 1          # lengths 1000, depths 0 50 100, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

from retrieval_head import ModelSpec, load_model
from retrieval_head.experiments.detect import DetectSettings, detect
from retrieval_head.methods.repeat import RepeatSettings, repeat_scores


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000])
    ap.add_argument("--depths", type=int, nargs="+", default=[0, 50, 100])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok, _ = load_model(ModelSpec(device="cpu"))
    runs = {"retrieval": ("retrieval",), "retrieval + query-focus": ("retrieval", "query-focus"),
            "retrieval + needle-mass": ("retrieval", "needle-mass")}
    jobs = {k: (lambda m=m: detect(model, tok, DetectSettings(context_lengths=tuple(a.lengths),
                                                              depth_percents=tuple(a.depths), method=m),
                                   progress=False)) for k, m in runs.items()}
    jobs["induction + echo (one pass)"] = lambda: repeat_scores(model, tok, RepeatSettings())
    times: dict[str, list] = {k: [] for k in jobs}
    for r in range(a.rounds):
        for k in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
            times[k].append(timed(jobs[k]))
    base = statistics.median(w for w, _ in times["retrieval"])
    print(f"| run | wall s (median of {a.rounds}) | CPU s | vs retrieval sweep |\n|---|---:|---:|---:|")
    for k, t in times.items():
        w, c = statistics.median(x for x, _ in t), statistics.median(y for _, y in t)
        print(f"| {k} | {w:.1f} | {c:.1f} | {w / base:.2f} |")
    print(json.dumps({"lengths": a.lengths, "depths": a.depths, "threads": a.threads, "times": times}))


if __name__ == "__main__":
    main()
