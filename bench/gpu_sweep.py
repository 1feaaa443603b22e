"""GPU scale check with no downloads: random-weight models shaped like Llama-2-7B (32 x 32
heads, MHA) and Llama-3-8B (32 x 32 query heads, 8 KV heads), bf16, at long contexts.

For each (shape, length) it times one detection trial (chunked prefill, then N probed decode
steps with the retrieval scorer) and one masked-NIAH cell (one prefill shared by no mask,
top-K and random-K decodes), and records peak GPU memory. Results are appended to a JSON-lines
file as they come, so a run cut short still reports what it reached.

    python bench/gpu_sweep.py --shapes mha gqa --lengths 16384 65536 100000 --out bench/gpu.jsonl

Arithmetic (bf16): the MHA shape holds ~13 GiB of weights and 0.5 MiB of KV cache per token
(32 layers x 2 x 32 heads x 128 x 2 B), so 100K tokens need ~49 GiB of cache: it fits 80 GB.
At 128K its cache alone is ~62 GiB, so 128K is the GQA shape's target (4x less cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval_head.attention import ArgmaxProbe, HeadMask  # noqa: E402
from retrieval_head.decode import greedy_decode, prefill  # noqa: E402
from retrieval_head.scoring import RetrievalScorer  # noqa: E402
from retrieval_head.shape import ModelShape  # noqa: E402

SHAPES = {
    "mha": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0),
    "gqa": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return ""


def build(shape: str, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=max_len + 1024, attn_implementation="sdpa")
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30


def detection_trial(model, ids, new_tokens, chunk):
    L, H = ModelShape.of(model).grid
    span = (len(ids) // 2, len(ids) // 2 + 16)
    scorer = RetrievalScorer(ids, span, L, H, device="cuda")
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
    cache = prefill(model, torch.tensor([ids[:-1]], device="cuda"), chunk)
    for m in masks:
        greedy_decode(model, _Tok(), ids, stop, new_tokens, mask=m, cache=cache)
        cache.crop(-(cache.get_seq_length() - (len(ids) - 1)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["mha", "gqa"], choices=list(SHAPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536, 100000])
    p.add_argument("--new_tokens", type=int, default=20)
    p.add_argument("--prefill_chunk", type=int, default=8192)
    p.add_argument("--out", default="bench/gpu.jsonl")
    args = p.parse_args(argv)
    out = Path(args.out)
    for shape in args.shapes:
        model = build(shape, max(args.lengths))
        for n in args.lengths:
            ids = torch.randint(0, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
            row = {"shape": shape, "tokens": n, "device": torch.cuda.get_device_name(), "new_tokens": args.new_tokens}
            for name, fn in (("detect", lambda: detection_trial(model, ids, args.new_tokens, args.prefill_chunk)),
                             ("niah3", lambda: niah_cell(model, ids, args.new_tokens, args.prefill_chunk))):
                try:
                    _, secs, peak = timed(fn)
                    row.update({f"{name}_s": round(secs, 2), f"{name}_peak_gib": round(peak, 2)})
                except torch.OutOfMemoryError:
                    row[f"{name}_s"] = "OOM"
                    torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
        model = None  # free the weights before the next shape
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
