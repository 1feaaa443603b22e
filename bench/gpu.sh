#!/usr/bin/env bash
# One short GPU pass (~8 min budget) needing no downloads: random-weight Llama-2-7B (MHA)
# and Llama-3-8B (GQA) shapes in bf16. Writes results as it goes to ${OUT:-bench}/gpu.jsonl.
# A first pass at 16K / 64K / the largest; the MHA target is 100K, the GQA target 128K.
# One JSON line per (shape, length), with the keys of each row: detect (one detection trial), niah3 (one masked cell),
# stream (half the heads streamed, sink 4 + recent 64: N decode steps vs plain on one prefill, and a
# phase-all streamed prefill vs a plain one). Drop a row with e.g. --rows detect niah3.
set -uo pipefail
cd "$(dirname "$0")/.."
dest="${OUT:-bench}"
export PYTHONUNBUFFERED=1
timeout 240 python bench/gpu_sweep.py --shapes mha --lengths 16384 65536 100000 --out "$dest/gpu.jsonl"
timeout 240 python bench/gpu_sweep.py --shapes gqa --lengths 16384 65536 131072 --out "$dest/gpu.jsonl"
