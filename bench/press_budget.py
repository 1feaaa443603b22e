"""The throughput a press buys: the largest batch whose pressed KV cache fits a memory budget,
and its decode tokens/s.

At each length, the plain in-place cache (``kvcache.GrowingCache``, every key: ``full``) and
each press at ``--budget`` (the part of the cache it keeps; default 0.1): streaming_llm, snapkv,
pyramidkv, adakv (over SnapKV), knorm, duo and headkv, the last two ranked by a head file
(SmolLM2: the shipped ``head_score/SmolLM2-135M-Instruct.kv_max.json``; other shapes, or none
given: a seeded random ranking; the row says which):

1. **Largest batch**: the most rows whose cache fits ``--memory_mib`` (each of them) right after the prefill, by
   the exact prediction: ``keep.pressed_bytes`` of the press's keep sets (``keep.cache_bytes``
   for the full cache). The press is asked layer by layer on random keys, values and window
   queries (``pressed_storage.random_layers``), ``--chunk`` rows at a time; the batch is the
   largest ``n`` whose first ``n`` rows fit (``largest_batch``). Rows of one length keep the same
   counts per head under every press but AdaKV (seen on the first draw; ``KeepRows`` repeats
   them), so their bytes are linear in the batch; AdaKV's rows differ and each head pads to its
   longest row, so its rows are drawn up to the batch (on random keys its heads differ less than
   on a real model's: ``pressed_storage --real``).
2. **Tokens/s**: at that batch, or at ``--max_batch`` where smaller (the row says ``capped``), a
   real ``PressedCache`` holds the first rows' keep sets over random keys (updated and
   compressed as its prefill leaves it; its ``nbytes()`` checked equal to the prediction) and
   decodes greedy steps of the model, taking turns step by step with the full cache at its own
   (timed) batch, so whatever else runs slows both alike: tokens/s = rows / median step, and
   against the full cache's in the same turns.

A decode step's cost depends on the cache's shapes, not its contents: random keys time what a
real prefill's would. Weights: ``--shapes smollm2`` the real embedded SmolLM2-135M-Instruct
(float32 on CPU); ``gqa`` / ``mha`` / ``tiny`` random-weight Llama shapes in bf16
(``gpu_sweep.build``; ``gqa`` is Llama-3-8B's). ``--dry``: the largest batches only, no cache
filled, no step timed. Prints a markdown table; ``--out``: one JSON line per row, appended as
it comes::

    OMP_NUM_THREADS=2 .venv/bin/python bench/press_budget.py --threads 2 --lengths 8000 --max_batch 16
    .venv/bin/python bench/press_budget.py --device cuda --shapes gqa --lengths 8000 32768 \\
        --memory_mib 16384 --out gpu_press.jsonl
    .venv/bin/python bench/press_budget.py --device cpu --shapes tiny --lengths 256 --memory_mib 2 --steps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, whatever is installed

import torch  # noqa: E402

from bench.headwise_memory import MIB, Stepper, fill, interleaved, load, parser, random_kv  # noqa: E402
from bench.pressed_storage import SCORES, pressed, random_layers  # noqa: E402
from retrieval_head.core.decode import input_device  # noqa: E402
from retrieval_head.core.headwise_attend import HeadwiseAttention  # noqa: E402
from retrieval_head.core.keep import PRESSED_GROUPS, cache_bytes, pressed_bytes  # noqa: E402
from retrieval_head.core.kvcache import GrowingCache  # noqa: E402
from retrieval_head.presses.registry import RANKED, make_press  # noqa: E402

PRESSES = ("streaming_llm", "snapkv", "pyramidkv", "adakv", "knorm", "duo", "headkv")
FULL = "full"


def largest_batch(bytes_of, budget: int, most: int) -> int:
    """The largest ``n`` (at most ``most``; 0: not even one row fits) with ``bytes_of(n) <=
    budget``, ``bytes_of`` never decreasing in ``n`` (more rows, each head padded to its longest
    row, never hold less): doubling, then bisecting, so a slow ``bytes_of`` is asked ~2 log n times.

    >>> largest_batch(lambda n: 100 * n, 350, 1000), largest_batch(lambda n: 100 * n, 400, 1000)
    (3, 4)
    >>> largest_batch(lambda n: 100 * n, 99, 1000), largest_batch(lambda n: 100 * n, 10**6, 7)
    (0, 7)
    """
    if most < 1 or bytes_of(1) > budget:
        return 0
    lo, hi = 1, 2  # bytes_of(lo) fits
    while hi <= most and bytes_of(hi) <= budget:
        lo, hi = hi, 2 * hi
    hi = min(hi, most + 1)  # bytes_of(hi) does not fit, or hi is past most
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if bytes_of(mid) <= budget else (lo, mid)
    return lo


class KeepRows:
    """A press's keep sets on random rows (per layer, bool ``[n, kv, length]``, on the CPU),
    drawn ``chunk`` rows at a time (each draw its own seed) as more rows are asked for. Where
    every row drawn keeps the same counts per head in every layer (``uniform``: every press but
    AdaKV, whose counts depend on the keys), more rows repeat the drawn ones: a pressed cache's
    bytes depend on its rows' counts per head only (``keep.pressed_bytes``), so theirs are exact."""

    def __init__(self, shape, press, budget: float, length: int, chunk: int, dtype, device):
        self.shape, self.press, self.budget, self.length, self.chunk = shape, press, budget, length, chunk
        self.dtype, self.device = dtype, device
        self.kept: list[torch.Tensor] = []
        self.draws, self.uniform = 0, False

    def first(self, n: int) -> list[torch.Tensor]:
        new: list[list[torch.Tensor]] = []  # this call's draws, joined to the kept rows once after them
        have = self.kept[0].shape[0] if self.kept else 0
        while not self.uniform and (not self.draws or have < n):
            new.append([
                keep.cpu()
                for _, _, keep in random_layers(
                    self.shape, self.press, self.budget, self.chunk, self.length, self.draws, self.dtype, self.device
                )
            ])
            have += new[-1][0].shape[0]
            self.draws += 1
            if self.draws == 1:  # more rows cannot make a non-uniform draw uniform: the first decides
                self.uniform = all(bool((k.sum(-1) == k[:1].sum(-1)).all()) for k in new[0])
        if new:
            self.kept = [torch.cat(layer) for layer in zip(*([self.kept] if self.kept else []), *new)]
        drawn = self.kept[0].shape[0]
        rows = torch.arange(n) % drawn  # the first n rows, the drawn ones repeated past them (uniform)
        return [k[:n] if n <= drawn else k[rows] for k in self.kept]

    def nbytes(self, n: int, itemsize: int) -> int:
        """What a pressed cache of the first ``n`` rows holds right after the prefill."""
        return pressed_bytes(self.first(n), self.length, self.shape.head_dim, itemsize, most=PRESSED_GROUPS)


def press_for(name: str, shape, scores, length: int):
    """The press ``name`` with its defaults; the ranked ones by ``scores``, Duo planned for ``length``."""
    return make_press(name, shape, scores if name in RANKED else None, **({"length": length} if name == "duo" else {}))


def rate(batch: int, times: list[float]) -> tuple[float, float]:
    """(median step ms, tokens/s) of ``batch`` rows."""
    step = statistics.median(times)
    return step * 1e3, batch / step


def press_row(model, shape, name: str, length: int, full: dict, args, scores) -> dict:
    """One press's row: its largest batch, then (unless dry) its cache filled and timed in turns with ``full``'s."""
    itemsize = next(model.parameters()).element_size()
    dtype, device, memory = next(model.parameters()).dtype, input_device(model), args.memory_mib * MIB
    press = press_for(name, shape, scores, length)
    rows = KeepRows(shape, press, args.budget, length, args.chunk, dtype, device)
    most = largest_batch(lambda n: rows.nbytes(n, itemsize), memory, args.most_rows)
    row = {"press": name, "largest_batch": most, "largest_mib": round(rows.nbytes(most, itemsize) / MIB, 2)}
    if args.dry or most == 0:
        return row
    batch = min(most, args.max_batch or most)
    kept = [k.to(device) for k in rows.first(batch)]
    layers = ((k, v, keep) for (k, v), keep in zip(random_kv(shape, batch, length, dtype, device), kept))
    cache = pressed(shape, press, args.budget, layers, PRESSED_GROUPS, args.steps + 2)
    held, predicted = cache.nbytes(), pressed_bytes(kept, length, shape.head_dim, itemsize)
    assert held == predicted, (name, held, predicted)  # the cache holds exactly what the batch was sized by
    steppers = {name: Stepper(model, cache, batch, HeadwiseAttention())}
    if "cache" in full:  # (not even one full row fits: the press is timed alone)
        steppers[FULL] = Stepper(model, full["cache"], full["timed_batch"])
    times = interleaved(steppers, args.steps)
    step_ms, tokens_s = rate(batch, times[name])
    row.update(timed_batch=batch, capped=batch < most, held_mib=round(held / MIB, 2), as_predicted=held == predicted)
    row.update(step_ms=round(step_ms, 1), tokens_s=round(tokens_s, 1))
    if FULL in times:
        full["times"] += times[FULL]
        full_tokens_s = rate(full["timed_batch"], times[FULL])[1]
        row.update(full_tokens_s=round(full_tokens_s, 1), vs_full=round(tokens_s / full_tokens_s, 2))
    return row


def length_rows(model, shape, scores, length: int, args):
    """Each press's row at ``length`` as it comes, then the full cache's (filled once, it takes
    turns with each press's cache in turn; its row: the median over all its steps)."""
    itemsize = next(model.parameters()).element_size()
    dtype, device = next(model.parameters()).dtype, input_device(model)
    most = largest_batch(lambda n: cache_bytes(shape, None, n, length, itemsize), args.memory_mib * MIB, args.most_rows)
    full = {
        "press": FULL,
        "largest_batch": most,
        "largest_mib": round(cache_bytes(shape, None, most, length, itemsize) / MIB, 2),
    }
    if not args.dry and most:
        full.update(timed_batch=min(most, args.max_batch or most), times=[])
        full["cache"] = GrowingCache(reserve=(args.steps + 1) * len(args.presses) + 2)
        fill(full["cache"], shape, full["timed_batch"], length, dtype, device)
    for name in args.presses:
        yield press_row(model, shape, name, length, full, args, scores)
    if full.pop("cache", None) is not None and full["times"]:
        step_ms, tokens_s = rate(full["timed_batch"], full.pop("times"))
        full.update(
            capped=full["timed_batch"] < most,
            step_ms=round(step_ms, 1),
            tokens_s=round(tokens_s, 1),
            full_tokens_s=round(tokens_s, 1),
            vs_full=1.0,
        )
    full.pop("times", None)
    yield full


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (JSON rows of one or more shapes, lengths, memory budgets)."""
    lines = [
        "| shape | tokens | MiB budget | press | budget | largest batch | MiB at it | timed batch "
        "| held MiB (= predicted) | step ms | tokens/s | vs full, same turns |",
        "|---|" * 1 + "---|" * 11,
    ]
    order = sorted(rows, key=lambda r: (r["shape"], r["tokens"], r["memory_mib"], r["press"] != FULL))  # stable
    for r in order:
        timed = f"{r['timed_batch']}{' (capped)' if r['capped'] else ''}" if "timed_batch" in r else "-"
        lines.append(
            f"| {r['shape']} | {r['tokens']} | {r['memory_mib']} | {r['press']} | "
            f"{r['budget'] if r['press'] != FULL else 1.0:g} | "
            f"{r['largest_batch']} | {r['largest_mib']} | {timed} | {r.get('held_mib', '-')} | "
            f"{r.get('step_ms', '-')} | {r.get('tokens_s', '-')} | {r.get('vs_full', '-')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser()
    p.description = __doc__.splitlines()[0]
    p.set_defaults(lengths=[8000], steps=6)
    p.add_argument("--budget", type=float, default=0.1, help="the part of the KV cache each press keeps")
    p.add_argument(
        "--memory_mib",
        type=int,
        nargs="+",
        default=[2048],
        help="MiB of keys and values each cache may hold (several: a row of each)",
    )
    p.add_argument("--presses", nargs="+", default=list(PRESSES), choices=PRESSES)
    p.add_argument(
        "--max_batch",
        type=int,
        default=None,
        help="time at most this many rows (the largest batch is still predicted in full)",
    )
    p.add_argument("--most_rows", type=int, default=4096, help="stop counting rows here")
    p.add_argument("--chunk", type=int, default=8, help="rows of keep sets drawn at a time")
    p.add_argument("--dry", action="store_true", help="the largest batches only: no cache filled, no step timed")
    p.add_argument("--out", default=None, help="append one JSON line per row")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here; for a smoke run pass --device cpu --shapes tiny")
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.shapes:
        head = args.head_score or (str(SCORES) if name == "smollm2" else None)
        model, shape, scores, _ = load(name, argparse.Namespace(**{**vars(args), "head_score": head}))
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        common = {
            "shape": name,
            "device": device,
            "threads": torch.get_num_threads(),
            "weights": "real (embedded)" if name in ("smollm2", "gemma3") else "random",
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "ranking": Path(head).name if head else "seeded random",
            "budget": args.budget,
            "steps": args.steps,
        }
        for length, mib in ((n, m) for n in args.lengths for m in args.memory_mib):
            at = argparse.Namespace(**{**vars(args), "memory_mib": mib})
            for r in length_rows(model, shape, scores, length, at):
                rows.append({**common, "tokens": length, "memory_mib": mib, **r})
                print(json.dumps(rows[-1]), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
        model = None  # free the weights before the next shape
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
