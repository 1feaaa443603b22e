"""GPU scale check with no downloads: random-weight models shaped like Llama-2-7B (32 x 32
heads, MHA) and Llama-3-8B (32 x 32 query heads, 8 KV heads), bf16, at long contexts.

For each (shape, length) it times one detection trial (chunked prefill, then N probed decode
steps with the retrieval scorer) and one masked-NIAH cell (one prefill shared by no mask,
top-K and random-K decodes), and records peak GPU memory. The streaming row (KV-cache
compression by streaming heads, half the query heads streamed with sink 4 + recent 64):
N decode steps under ``HeadMask(heads, "stream", "decode", 4, 64)`` vs N plain decode steps,
both on one shared prefill (the cache cropped back between them; their peaks include that
cache), and one chunked prefill under ``intervene(model, mask=HeadMask(heads, "stream",
"all", 4, 64))`` vs a plain chunked prefill (keys ``stream_decode_*``, ``plain_decode_*``,
``stream_prefill_*``, ``plain_prefill_*`` and their ratios). Each (shape, length) is one
JSON line, appended to a JSON-lines file as it comes, so a run cut short still reports what
it reached.

    python bench/gpu_sweep.py --shapes mha gqa --lengths 16384 65536 100000 --out bench/gpu.jsonl
    # a CPU smoke run of every row on a tiny random model (no GPU needed):
    python bench/gpu_sweep.py --device cpu --shapes tiny --lengths 300 --new_tokens 4 --prefill_chunk 128 --out x.jsonl

Arithmetic (bf16): the MHA shape holds ~13 GiB of weights and 0.5 MiB of KV cache per token
(32 layers x 2 x 32 heads x 128 x 2 B), so 100K tokens need ~49 GiB of cache: it fits 80 GB.
At 128K its cache alone is ~62 GiB, so 128K is the GQA shape's target (4x less cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval_head.core.decode import greedy_decode, prefill  # noqa: E402
from retrieval_head.core.intervene import ArgmaxProbe, HeadMask, intervene  # noqa: E402
from retrieval_head.core.scoring import RetrievalScorer  # noqa: E402
from retrieval_head.models.shape import ModelShape  # noqa: E402

SHAPES = {
    "mha": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0),
    "gqa": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    # smoke runs only (--device cpu): the same code paths on a model that runs anywhere
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, rope_theta=10000.0),
}
SINK, RECENT = 4, 64  # the streaming row: what a streamed head keeps
ROWS = ("detect", "niah3", "stream")


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return ""


def build(shape: str, max_len: int, device: str = "cuda"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=max_len + 1024, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def timed(fn):
    """(fn's result, wall seconds, peak GiB allocated during the call; CPU: None)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def detection_trial(model, ids, new_tokens, chunk):
    L, H = ModelShape.of(model).grid
    span = (len(ids) // 2, len(ids) // 2 + 16)
    scorer = RetrievalScorer(ids, span, L, H, device=model.device)
    stop = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    greedy_decode(model, _Tok(), ids, stop, new_tokens, probe=ArgmaxProbe(), prefill_chunk=chunk,
                  on_step=lambda t, tok, pos: scorer.update(pos, tok))
    return scorer.scores()


def niah_cell(model, ids, new_tokens, chunk, k=30):
    L, H = ModelShape.of(model).grid
    stop = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    masks = [None]
    for _ in range(2):  # "top" and "random": any k heads cost the same
        m = torch.zeros(L * H, dtype=torch.bool)
        m[torch.randperm(L * H, generator=g)[:k]] = True
        masks.append(HeadMask(m.reshape(L, H)))
    cache = prefill(model, torch.tensor([ids[:-1]], device=model.device), chunk)
    for m in masks:
        greedy_decode(model, _Tok(), ids, stop, new_tokens, mask=m, cache=cache)
        cache.crop(-(cache.get_seq_length() - (len(ids) - 1)))


def half_heads(model) -> torch.Tensor:
    """bool [layers, heads]: half the query heads, drawn with seed 0 (the streamed ones)."""
    L, H = ModelShape.of(model).grid
    m = torch.zeros(L * H, dtype=torch.bool)
    m[torch.randperm(L * H, generator=torch.Generator().manual_seed(0))[: L * H // 2]] = True
    return m.reshape(L, H)


def stream_rows(model, ids, new_tokens, chunk) -> dict:
    """The streaming row: {name: (seconds, peak GiB)} for N decode steps with half the heads
    streamed (phase decode, the prompt's cache compressed once) vs N plain ones, on one
    shared prefill (cropped back in between), then a phase-all streamed prefill vs a plain
    one (each a fresh chunked prefill; no decode). An OOM is recorded as "OOM"."""
    heads = half_heads(model)
    stop = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    prompt = torch.tensor([ids[:-1]], device=model.device)
    out: dict = {}

    def run(name, fn):
        try:
            _, secs, peak = timed(fn)
            out[name] = (secs, peak)
        except torch.OutOfMemoryError:
            out[name] = ("OOM", None)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    try:
        cache = prefill(model, prompt, chunk, reserve=new_tokens)
    except torch.OutOfMemoryError:
        out["plain_decode"] = out["stream_decode"] = ("OOM", None)
        cache = None
        torch.cuda.empty_cache()
    if cache is not None:
        decode_mask = HeadMask(heads, "stream", "decode", SINK, RECENT)
        for name, mask in (("plain_decode", None), ("stream_decode", decode_mask)):
            run(name, lambda mask=mask: greedy_decode(model, _Tok(), ids, stop, new_tokens, mask=mask, cache=cache))
            cache.crop(-(cache.get_seq_length() - (len(ids) - 1)))
        cache = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    all_mask = HeadMask(heads, "stream", "all", SINK, RECENT)

    def streamed():
        with intervene(model, mask=all_mask):
            prefill(model, prompt, chunk)

    run("plain_prefill", lambda: prefill(model, prompt, chunk))
    run("stream_prefill", streamed)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["mha", "gqa"], choices=list(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536, 100000])
    p.add_argument("--new_tokens", type=int, default=20)
    p.add_argument("--prefill_chunk", type=int, default=8192)
    p.add_argument("--out", default="bench/gpu.jsonl")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                   help="which measurements (stream: streaming heads, decode and phase-all prefill vs plain)")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the code paths (with --shapes tiny)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; for a smoke run pass --device cpu --shapes tiny")
    for shape in args.shapes:
        model = build(shape, max(args.lengths), args.device)
        device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
        if "stream" in args.rows:  # warm-up of the streamed paths (their kernels differ from the plain ones)
            stream_rows(model, list(range(min(256, min(args.lengths)))), 2, args.prefill_chunk)
        for n in args.lengths:
            ids = torch.randint(0, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
            row = {"shape": shape, "tokens": n, "device": device, "new_tokens": args.new_tokens}
            new, chunk = args.new_tokens, args.prefill_chunk
            for name, fn in (("detect", partial(detection_trial, model, ids, new, chunk)),
                             ("niah3", partial(niah_cell, model, ids, new, chunk))):
                if name not in args.rows:
                    continue
                try:
                    _, secs, peak = timed(fn)
                    row.update({f"{name}_s": round(secs, 2), f"{name}_peak_gib": peak and round(peak, 2)})
                except torch.OutOfMemoryError:
                    row[f"{name}_s"] = "OOM"
                    torch.cuda.empty_cache()
            if "stream" in args.rows:
                row.update(stream=f"half the heads, sink {SINK} + recent {RECENT}")
                got = stream_rows(model, ids, args.new_tokens, args.prefill_chunk)
                for name, (secs, peak) in got.items():
                    row[f"{name}_s"] = secs if secs == "OOM" else round(secs, 3)
                    row[f"{name}_peak_gib"] = peak and round(peak, 2)
                for what in ("decode", "prefill"):
                    a, b = got[f"stream_{what}"][0], got[f"plain_{what}"][0]
                    if not isinstance(a, str) and not isinstance(b, str):
                        row[f"stream_{what}_ratio"] = round(a / b, 3)
            print(json.dumps(row), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
        model = None  # free the weights before the next shape
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
