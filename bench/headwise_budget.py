"""The throughput a head-wise KV cache buys: the largest batch whose cache fits a memory budget.

For each length, each cache (the in-place ``GrowingCache``, a ``HeadwiseCache`` at each
fraction of KV heads kept full, sink 4 + recent 64, phase decode) gets the most rows whose
keys and values fit ``--budget`` MiB after the timed steps (``keep.cache_bytes``, which the
cache holds exactly), is filled with random keys (a step's cost depends on shapes, not
contents; ``headwise_memory.fill``) and decodes greedy steps of the real model, the caches
taking turns step by step: rows per second of each, and against the in-place cache's::

    OMP_NUM_THREADS=1 .venv/bin/python bench/headwise_budget.py --head_score HS.json \
        --lengths 8192 --budget 2048 --fractions 0.1 0.25 --steps 4
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, whatever is installed

import torch  # noqa: E402

from bench.headwise_memory import MIB, RECENT, SINK, Stepper, fill, held_bytes, interleaved, load, make, parser  # noqa: E402
from retrieval_head.core.decode import input_device  # noqa: E402
from retrieval_head.core.keep import cache_bytes, keep_top  # noqa: E402


def rows_in(budget: int, shape, keep, length: int, itemsize: int) -> int:
    """The most rows whose cache (``keep``; None: every key) fits ``budget`` bytes at ``length``."""
    per_row = cache_bytes(shape, keep, 1, length, itemsize, SINK, RECENT, at=None if keep is None else length)
    return budget // per_row


def throughput(model, shape, scores, args) -> None:
    """The largest batch each cache holds in ``--budget`` MiB at each length (bytes from the
    keep set's prediction, which the cache holds exactly), filled and decoded: the decode
    throughput (rows / step time, the caches taking turns) a compressed cache buys."""
    itemsize = next(model.parameters()).element_size()
    dtype, device, reserve = next(model.parameters()).dtype, input_device(model), args.steps + 2
    print(f"| tokens | cache | rows in {args.budget} MiB | cache MiB | step ms | tokens/s | vs in-place |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        end = length + args.steps + 1  # what the cache holds after the timed steps
        keeps = {"in-place": None, **{f"{f:.0%} full": keep_top(scores, 1, fraction=f) for f in args.fractions}}
        caches, rows = {}, {}
        for name, keep in keeps.items():
            rows[name] = rows_in(args.budget * MIB, shape, keep, end, itemsize)
            caches[name] = make("growing" if keep is None else "headwise", shape, keep, reserve)
            fill(caches[name], shape, rows[name], length, dtype, device)
        times = interleaved({k: Stepper(model, c, rows[k]) for k, c in caches.items()}, args.steps)
        rate = {k: rows[k] / statistics.median(t) for k, t in times.items()}
        for k in caches:
            print(f"| {length} | {k} | {rows[k]} | {held_bytes(caches[k]) / MIB:.0f} | "
                  f"{statistics.median(times[k]) * 1e3:.0f} | {rate[k]:.1f} | {rate[k] / rate['in-place']:.2f} |",
                  flush=True)
        del caches


def main() -> int:
    p = parser()
    p.add_argument("--budget", type=int, default=2048, help="MiB of keys and values each cache may hold")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.shapes:
        model, shape, scores, _ = load(name, args)
        throughput(model, shape, scores, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
