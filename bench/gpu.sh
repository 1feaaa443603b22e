#!/usr/bin/env bash
# One short GPU pass (~12 min budget: 190 + 190 + 190 + 150 s at most) needing no downloads: random-weight Llama-2-7B (MHA)
# and Llama-3-8B (GQA) shapes in bf16. Writes results as it goes to ${OUT:-bench}/gpu.jsonl
# ${OUT:-bench}/gpu_headwise.jsonl and ${OUT:-bench}/gpu_press.jsonl.
# A first pass at 16K / 64K / the largest; the MHA target is 100K, the GQA target 128K.
# One JSON line per (shape, length), with the keys of each row: detect (one detection trial), niah3 (one masked cell),
# stream (half the heads streamed, sink 4 + recent 64: N decode steps vs plain on one prefill, and a
# phase-all streamed prefill vs a plain one). Drop a row with e.g. --rows detect niah3.
# The head-wise KV cache (gpu_headwise.jsonl, one JSON line per shape x length x batch): the in-place
# cache (kvcache.GrowingCache), transformers' DynamicCache and HeadwiseCache with 10% / 25% of the KV
# heads full (sink 4 + recent 64, phase decode), each alone: bytes held, decode step ms, CUDA peak
# (max_memory_allocated after reset_peak_memory_stats, weights included). The head-wise cache runs
# sdpa once per head group; a flash-attn varlen path is not implemented. CPU smoke run of the same code:
#   python bench/headwise_memory.py --device cpu --shapes tiny --lengths 256 --steps 2 --out x.jsonl
# The presses (gpu_press.jsonl, one JSON line per shape x length x memory budget x press, bench/press_budget.py):
# the Llama-3-8B shape (random weights, bf16) at 8,000 tokens, each press at 10 % (streaming_llm, snapkv,
# pyramidkv, adakv, knorm, duo, headkv; duo and headkv by a seeded random ranking) and the full in-place cache:
# the largest batch whose cache fits 2 GiB and 16 GiB after the prefill (keep.pressed_bytes of the press's keep
# sets on random keys), then that batch's real PressedCache (nbytes checked equal) decoding 8 steps in turns with
# the full cache's: tokens/s and the ratio. CPU smoke run of the same code:
#   python bench/press_budget.py --device cpu --shapes tiny --lengths 256 --memory_mib 2 --steps 2
set -uo pipefail
cd "$(dirname "$0")/.."
dest="${OUT:-bench}"
export PYTHONUNBUFFERED=1
timeout 190 python bench/gpu_sweep.py --shapes mha --lengths 16384 65536 100000 --out "$dest/gpu.jsonl"
timeout 190 python bench/gpu_sweep.py --shapes gqa --lengths 16384 65536 131072 --out "$dest/gpu.jsonl"
timeout 190 python bench/headwise_memory.py --device cuda --shapes gqa mha --lengths 8192 32768 --batches 1 4 \
    --fractions 0.1 0.25 --steps 8 --out "$dest/gpu_headwise.jsonl"
timeout 150 python bench/press_budget.py --device cuda --shapes gqa --lengths 8000 --memory_mib 2048 16384 \
    --steps 8 --out "$dest/gpu_press.jsonl"
