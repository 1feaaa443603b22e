"""Start time of the command line: wall seconds of fresh processes (docs/performance.md).

Times ``retrieval-head --help``, ``retrieval-head mask --help`` and ``retrieval-head heads top``
on a head-score file in the original format (SmolLM2-135M's 30 x 9 heads, 60 trials, written
into a temporary folder), against ``python -c pass``, ``import torch`` and ``import
transformers``; each command runs once to warm the file cache, then ``--repeats`` times,
the commands interleaved. Prints a markdown table: median and min-max seconds.

    .venv/bin/python bench/start_time.py            # 5 repeats

The console command is run as ``python -m retrieval_head`` with this checkout first on
``PYTHONPATH`` (the same code as ``retrieval-head``, which names an installed copy).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD_FILE = "head_score/SmolLM2-135M-Instruct.json"


def commands() -> dict[str, list[str]]:
    py, cmd = sys.executable, [sys.executable, "-m", "retrieval_head"]
    return {"retrieval-head --help": [*cmd, "--help"],
            "retrieval-head mask --help": [*cmd, "mask", "--help"],
            f"retrieval-head heads top {HEAD_FILE}": [*cmd, "heads", "top", HEAD_FILE],
            "python -c pass": [py, "-c", "pass"],
            'python -c "import torch"': [py, "-c", "import torch"],
            'python -c "import transformers"': [py, "-c", "import transformers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as d:
        rng = random.Random(0)
        (Path(d) / "head_score").mkdir()
        (Path(d) / HEAD_FILE).write_text(json.dumps(
            {f"{layer}-{head}": [round(rng.random() * (rng.random() < 0.1), 3) for _ in range(60)]
             for layer in range(30) for head in range(9)}))
        cmds, times = commands(), {}
        for c in cmds.values():  # warm the file cache
            subprocess.run(c, env=env, cwd=d, capture_output=True, check=True)
        load = os.getloadavg()[0]
        for _ in range(args.repeats):
            for name, c in cmds.items():
                t = time.perf_counter()
                subprocess.run(c, env=env, cwd=d, capture_output=True, check=True)
                times.setdefault(name, []).append(time.perf_counter() - t)
    print(f"load average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} CPUs\n")
    print("| command | median s | min-max s |\n|---|---|---|")
    for name, t in times.items():
        print(f"| `{name}` | {statistics.median(t):.2f} | {min(t):.2f}-{max(t):.2f} |")


if __name__ == "__main__":
    main()
