"""The adaptive sweep (--until_stable K) against the full sweep on one grid, back to back.

Runs ``retrieval_head_detection.py GRID`` (every trial), then the same with ``--until_stable K``,
in fresh processes one after the other, and prints a markdown row: the trials each ran, the
fraction, the wall and CPU-time ratios (CPU = the child's user + system seconds, less sensitive
to other jobs on the machine), and whether the two top-K sets are equal. ``--replay`` skips
the adaptive run's trials: it copies the full sweep's folder and resumes it with
``--until_stable K`` (the same trials, the same records: which trials the adaptive sweep runs
and its top K, exactly; its time is then the sum of those trials' ``duration_s`` in the full run,
an estimate).

    OMP_NUM_THREADS=1 .venv/bin/python bench/adaptive_sweep.py --out /tmp/ad -- \\
        --context_lengths 500 1000 1500 2000 --depth_percents 0 25 50 75 100
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed
NAME = "SmolLM2-135M-Instruct"


def run(out: Path, grid: list[str], extra: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one detection run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "retrieval_head_detection.py"), *grid, "--threads", "1", "--quiet",
                    "--output_dir", str(out), *extra], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def top(out: Path, k: int) -> list[str]:
    d = json.loads((out / f"{NAME}.json").read_text())
    means = {h: sum(v) / len(v) for h, v in d.items()}
    order = sorted(d, key=lambda h: (-means[h], tuple(map(int, h.split("-")))))  # ties layer-major
    return order[:k]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a scratch folder (full/ and adaptive/ inside)")
    p.add_argument("-k", type=int, default=10, help="--until_stable K")
    p.add_argument("--replay", action="store_true", help="reuse out/full; derive the adaptive run from its log")
    p.add_argument("grid", nargs=argparse.REMAINDER, help="-- then the grid options")
    args = p.parse_args()
    grid = [a for a in args.grid if a != "--"]
    full, adaptive = Path(args.out) / "full", Path(args.out) / "adaptive"
    if not args.replay:
        wall_f, cpu_f = run(full, grid, ["--overwrite"])
        wall_a, cpu_a = run(adaptive, grid, ["--overwrite", "--until_stable", str(args.k)])
    else:
        shutil.rmtree(adaptive, ignore_errors=True)
        shutil.copytree(full, adaptive)
        run(adaptive, grid, ["--resume", "--until_stable", str(args.k)])
    stop = json.loads((adaptive / f"{NAME}.manifest.json").read_text())["stopping"]
    records = [json.loads(line) for line in (full / f"{NAME}.trials.jsonl").read_text().splitlines()]
    if args.replay:  # the time estimate: the full run's per-trial seconds, summed over the trials each takes
        keys = [(r["needle_id"], r["context_length"], r["depth_percent"]) for r in records]
        used = {tuple(x) for x in _adaptive_keys(stop, keys)}
        wall_f = cpu_f = sum(r["duration_s"] for r in records)
        wall_a = cpu_a = sum(r["duration_s"] for r, key in zip(records, keys) if key in used)
    same = set(top(full, args.k)) == set(top(adaptive, args.k))
    print(f"| {' '.join(grid)} | {len(records)} | {stop['trials_run']} ({stop['trials_run'] / len(records):.1%}) | "
          f"{len(stop['rounds'])} of {stop['rounds_planned']} | {wall_a / wall_f:.3f} | {cpu_a / cpu_f:.3f} | "
          f"{'yes' if same else 'no'} | {'stopped' if stop['stopped'] else 'not stable'} "
          f"(kept {stop['rounds'][-1].get('kept', 0):.3f}) |")
    print(f"full: {wall_f:.1f} s wall, {cpu_f:.1f} s CPU; adaptive: {wall_a:.1f} s wall, {cpu_a:.1f} s CPU"
          + (" (replay: sums of the full run's per-trial duration_s)" if args.replay else ""))
    print("top-%d full:     %s\ntop-%d adaptive: %s" % (args.k, " ".join(top(full, args.k)), args.k,
                                                         " ".join(top(adaptive, args.k))))
    return 0


def _adaptive_keys(stop: dict, keys: list) -> list:
    """The trials of the rounds the adaptive run took (``adaptive.rounds`` over the full grid)."""
    from retrieval_head.experiments.adaptive import rounds

    grid = rounds(sorted({k[0] for k in keys}), sorted({k[1] for k in keys}), sorted({k[2] for k in keys}))
    return [k for r in grid[: len(stop["rounds"])] for k in r]


if __name__ == "__main__":
    sys.exit(main())
