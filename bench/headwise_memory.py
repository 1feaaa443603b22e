"""The head-wise KV cache against the in-place and transformers' caches: bytes and decode step time.

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

``--peak KIND`` runs one configuration in this process and prints its peak RSS (run it in a
fresh process, with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed blocks go back to the system);
``--prefill`` fills the cache by the model's own prefill of random tokens.

    OMP_NUM_THREADS=1 .venv/bin/python bench/headwise_memory.py --head_score HS.json \\
        --lengths 2048 4096 8192 --batches 1 4 --fractions 0.1 0.25
    MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python bench/headwise_memory.py --peak headwise --lengths 8192 ...
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from retrieval_head.core.attend import attend_grouped  # noqa: E402
from retrieval_head.core.headwise import HeadwiseCache  # noqa: E402
from retrieval_head.core.headwise_attend import HeadwiseAttention  # noqa: E402
from retrieval_head.core.hook import Hook  # noqa: E402
from retrieval_head.core.intervene import intervene  # noqa: E402
from retrieval_head.core.keep import cache_bytes, keep_top  # noqa: E402
from retrieval_head.core.kvcache import GrowingCache  # noqa: E402
from retrieval_head.headfiles.load import load_head_scores  # noqa: E402
from retrieval_head.models.loading import ModelSpec, load_model  # noqa: E402
from retrieval_head.models.shape import ModelShape  # noqa: E402

SINK, RECENT = 4, 64


def fill(cache, shape: ModelShape, batch: int, length: int, dtype) -> None:
    """Every layer's prefix: one update of ``length`` random keys and values (as a prefill)."""
    g = torch.Generator().manual_seed(0)
    for layer in range(shape.num_layers):
        k = torch.randn(batch, shape.num_kv_heads, length, shape.head_dim, generator=g).to(dtype)
        cache.update(k, torch.randn(k.shape, generator=g).to(dtype), layer)


def held_bytes(cache) -> int:
    """Bytes of keys and values a plain cache holds (the filled part of in-place buffers)."""
    if isinstance(cache, HeadwiseCache):
        return cache.nbytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


class GroupedDecode(Hook):
    """The in-place cache's decode steps through ``attend.attend_grouped`` (a group's query
    heads as rows of one sdpa call, as the head-wise cache computes its groups): separates
    what the kernel gains from what the dropped keys gain."""

    def attends(self, call):
        if call.is_decode and call.mask is None and call.window is None and call.softcap is None and call.sinks is None:
            return attend_grouped(call, None)
        return None


class Stepper:
    """Greedy decode steps of the model through one cache (the head-wise one inside its scope)."""

    def __init__(self, model, cache, batch: int, hook=None):
        self.model, self.cache = model, cache
        self.tok = torch.ones(batch, 1, dtype=torch.long)
        self.hook = HeadwiseAttention() if isinstance(cache, HeadwiseCache) else hook

    @torch.no_grad()
    def step(self) -> float:
        """Seconds of one step."""
        scope = intervene(self.model, hooks=[self.hook]) if self.hook else contextlib.nullcontext()
        with scope:
            t0 = time.perf_counter()
            out = self.model(input_ids=self.tok, cache=self.cache, use_cache=True)
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


def make(kind: str, shape, keep, reserve: int):
    if kind == "dynamic":
        return DynamicCache()
    if kind == "growing":
        return GrowingCache(reserve=reserve)
    return HeadwiseCache(shape, keep, SINK, RECENT, "decode", reserve=reserve)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head_score", default=None, help="ranks the KV heads kept full (none: a seeded random order)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--steps", type=int, default=8, help="timed decode steps per cache")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peak", choices=("growing", "dynamic", "headwise"), default=None,
                   help="one configuration (first length, batch, fraction); print its peak RSS")
    p.add_argument("--prefill", action="store_true", help="--peak: fill the cache by the model's prefill of random "
                                                          "tokens (else random keys)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _, _ = load_model(ModelSpec())
    shape, dtype = ModelShape.of(model), next(model.parameters()).dtype
    itemsize = next(model.parameters()).element_size()
    scores = (load_head_scores(Path(args.head_score), shape, unit="kv") if args.head_score
              else torch.rand(shape.num_layers, shape.num_kv_heads, generator=torch.Generator().manual_seed(0)))
    reserve = args.steps + 2
    if args.peak:
        length, batch, frac = args.lengths[0], args.batches[0], args.fractions[0]
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cache = make(args.peak, shape, keep_top(scores, 1, fraction=frac), reserve)
        if args.prefill:  # the model's own prefill (a phase-decode cache compresses each layer as it arrives)
            ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
            hooks = [HeadwiseAttention()] if args.peak == "headwise" else []
            with torch.no_grad(), intervene(model, hooks=hooks):
                model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        else:
            fill(cache, shape, batch, length, dtype)
        interleaved({args.peak: Stepper(model, cache, batch)}, args.steps)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {args.peak} | {length} | {batch} | {frac if args.peak == 'headwise' else '-'} | "
              f"{held_bytes(cache) / 2**20:.1f} | {base:.0f} | {peak:.0f} |")
        return 0
    print("| tokens | batch | KV heads full | bytes head-wise / in-place | = predicted | step ms in-place "
          "| step ms DynamicCache | step ms in-place, grouped sdpa | step ms head-wise | head-wise / in-place "
          "| head-wise / in-place grouped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        for batch in args.batches:
            keeps = {f: keep_top(scores, 1, fraction=f) for f in args.fractions}
            caches = {k: make(k, shape, None, reserve) for k in ("growing", "dynamic")}
            caches["grouped"] = make("growing", shape, None, reserve)
            caches.update({f: make("headwise", shape, keeps[f], reserve) for f in args.fractions})
            for c in caches.values():
                fill(c, shape, batch, length, dtype)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
