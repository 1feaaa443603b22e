"""The prefill's peak memory with the head-wise KV cache against the in-place cache, on real text.

Each case runs in a fresh process (``ru_maxrss`` never resets) with ``MALLOC_MMAP_THRESHOLD_=65536``
(glibc returns freed blocks of 64 KiB and more to the system, so a freed activation does not stay
resident): SmolLM2-135M-Instruct's own prefill of ``--batches`` rows x ``--lengths`` tokens of the
default haystack (Paul Graham's essays, row r its r-th stretch of text), then ``--steps`` decode
steps. Cases (``--cases``):

- ``in-place``: the project's in-place cache (``kvcache.GrowingCache``), one plain prefill call;
- ``in-place-chunked``: the same in chunks of ``--prefill_chunk`` tokens (what chunking alone does);
- ``decode``: ``HeadwiseCache`` phase decode, one prefill call (each layer compressed as its update
  arrives: one layer's uncompressed prompt at a time), per ``--fractions`` of KV heads full;
- ``all-chunked``: phase all (DuoAttention), prefill in chunks: a streamed head never holds more
  than sink + recent + one chunk.

Per case: the RSS high-water mark once every weight is resident (``base``: the weights are mapped
from the checkpoint and become resident as a forward reads them), after the prefill and after the
steps (``peak``); the RSS right after the prefill; the cache's MiB after the prefill (and whether
``keep.cache_bytes`` predicted it); the prefill's seconds. Prints a markdown table; ``--json`` also
each case's JSON line.

    .venv/bin/python bench/headwise_prefill.py --lengths 8000 --batches 4 --fractions 0.25 0.1 \\
        --prefill_chunk 512 --threads 2
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, whatever is installed

import torch  # noqa: E402

from bench.headwise_memory import Memory, load, measure, parser  # noqa: E402
from retrieval_head.core.decode import input_device, prefill  # noqa: E402
from retrieval_head.core.headwise import HeadwiseCache  # noqa: E402
from retrieval_head.core.headwise_attend import HeadwiseAttention  # noqa: E402
from retrieval_head.core.intervene import intervene  # noqa: E402
from retrieval_head.core.keep import keep_top  # noqa: E402
from retrieval_head.inputs.haystack import default_haystack_dir, read_haystack  # noqa: E402

# case: (cache kind, phase, chunked prefill)
CASES = {"in-place": ("growing", "decode", False), "in-place-chunked": ("growing", "decode", True),
         "decode": ("headwise", "decode", False), "all-chunked": ("headwise", "all", True)}
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def haystack_ids(tokenizer, batch: int, length: int) -> torch.Tensor:
    """``[batch, length]`` token ids of the default haystack: row r its r-th stretch of
    ``length`` tokens (the text repeated if it runs out)."""
    ids = tokenizer(read_haystack(default_haystack_dir()), add_special_tokens=False).input_ids
    need = batch * length
    return torch.tensor((ids * (need // len(ids) + 1))[:need]).reshape(batch, length)


def rss_now() -> float:
    """The process's resident MiB now (not its high-water mark)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def prefiller(model, ids: torch.Tensor, chunk: int | None):
    """A ``measure`` filler: the model's own prefill of ``ids`` (in chunks of ``chunk`` tokens),
    a head-wise cache inside its attention's scope; returns the row's prefill fields."""
    def fill(cache) -> dict:
        if isinstance(cache, HeadwiseCache) and cache.phase == "decode":
            cache.compress_at(ids.shape[1])  # at the whole prompt's end, however many chunks
        hooks = [HeadwiseAttention()] if isinstance(cache, HeadwiseCache) else []
        t0 = time.perf_counter()
        with intervene(model, hooks=hooks):
            prefill(model, ids.to(input_device(model)), chunk, cache=cache)
        return {"prefill_s": round(time.perf_counter() - t0, 1), "rss_after_prefill_mib": round(rss_now(), 1),
                "peak_after_prefill_mib": round(Memory(torch.device("cpu")).peak(), 1)}
    return fill


def one(args) -> dict:
    """The case ``args.one`` in this process: its row."""
    kind, args.phase, chunked = CASES[args.one]
    length, batch, frac = args.lengths[0], args.batches[0], args.fractions[0]
    model, shape, scores, tokenizer = load("smollm2", args)
    ids = (haystack_ids(tokenizer, batch, length) if args.tokens == "haystack" else
           torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0)))
    chunk = args.prefill_chunk if chunked else None
    keep = keep_top(scores, 1, fraction=frac)
    row = {"case": args.one, "phase": args.phase if kind == "headwise" else None, "chunk": chunk,
           "kv_full": f"{int(keep.sum())}/{keep.numel()}" if kind == "headwise" else None,
           "tokens": length, "batch": batch, "text": args.tokens, "threads": args.threads,
           "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}
    row.update(measure(model, shape, kind, keep, batch, length, args, prefiller(model, ids, chunk)))
    return row


def runs(args) -> list[tuple[str, float]]:
    """(case, fraction) in order; the in-place cases once (no fraction)."""
    out = []
    for case in args.cases:
        fracs = args.fractions if CASES[case][0] == "headwise" else args.fractions[:1]
        out += [(case, f) for f in fracs]
    return out


def main() -> int:
    p = parser()
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--prefill_chunk", type=int, default=512, help="tokens per call of the chunked cases")
    p.add_argument("--tokens", choices=("haystack", "random"), default="haystack", help="the prompt's text")
    p.add_argument("--json", action="store_true", help="also print each case's JSON line")
    p.add_argument("--one", choices=list(CASES), default=None, help="(internal) run one case in this process")
    p.set_defaults(lengths=[8000], batches=[4], fractions=[0.25, 0.1], steps=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(args)), flush=True)
        return 0
    print(f"{', '.join(f'{k}={v}' for k, v in ALLOCATOR.items())}; {args.lengths[0]} tokens x batch {args.batches[0]}"
          f" of {args.tokens} text, {args.threads} threads")
    print("| case | phase | prefill chunk | KV heads full | cache MiB after prefill | = predicted | base MiB "
          "| RSS after prefill | peak RSS MiB | peak - base | prefill s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    forward = [a for a in sys.argv[1:] if a != "--json"]
    for case, frac in runs(args):
        cmd = [sys.executable, __file__, *forward, "--one", case, "--fractions", str(frac)]
        done = subprocess.run(cmd, env={**os.environ, **ALLOCATOR}, capture_output=True, text=True)
        if done.returncode:
            print(f"| {case} | failed: {done.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if args.json:
            print(json.dumps(r))
        print(f"| {case} | {r['phase'] or '-'} | {r['chunk'] or '-'} | {r['kv_full'] or 'all'} | "
              f"{r['cache_mib']:.1f} | {r.get('as_predicted', '-')} | {r['base_mib']:.0f} | "
              f"{r['rss_after_prefill_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['base_mib']:.0f} | "
              f"{r['prefill_s']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
