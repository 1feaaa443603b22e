"""The arithmetic of ``bench/press_budget.py`` (the largest batch whose pressed cache fits a
memory budget) on a tiny shape with known answers, and its rows on the real ``PressedCache``:
3 layers x 2 KV heads of head_dim 16, float32, 100 keys, budget 0.1: a StreamingLLM row keeps
round(0.1 x 2 x 100) = 20 keys a layer, 3 x 2 (key, value) x 20 x 16 x 4 = 7,680 bytes; the
full cache's row 3 x 2 x 2 x 100 x 16 x 4 = 76,800."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is the checkout's, not the package's
from bench.headwise_memory import MIB  # noqa: E402
from bench.press_budget import FULL, KeepRows, largest_batch, length_rows, main, press_for  # noqa: E402
from retrieval_head.models.shape import ModelShape  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_module")  # main() sets the thread count: restored after

LENGTH, ROW, FULL_ROW = 100, 7680, 76800


def args(**kw):
    from argparse import Namespace

    given = dict(budget=0.1, memory_mib=1, max_batch=3, most_rows=4096, chunk=4, steps=1, dry=False)
    return Namespace(**{**given, "presses": ["streaming_llm", "adakv"], **kw})


def test_largest_batch_is_the_last_that_fits():
    rows = [0, 10, 20, 35, 35, 50, 51, 70]  # bytes of n rows, not linear
    for most in range(8):
        for budget in range(75):
            want = max(n for n in range(most + 1) if rows[n] <= budget)  # every n, one by one
            assert largest_batch(rows.__getitem__, budget, most) == want, (most, budget)


def test_streaming_llm_rows_known_bytes_and_batch():
    shape = ModelShape.of(tiny_llama())
    rows = KeepRows(shape, press_for("streaming_llm", shape, None, LENGTH), 0.1, LENGTH, 4, torch.float32, "cpu")
    assert [rows.nbytes(n, 4) for n in (1, 2, 7)] == [ROW, 2 * ROW, 7 * ROW]  # 7: the 4 drawn, repeated
    assert rows.uniform and rows.draws == 1
    assert largest_batch(lambda n: rows.nbytes(n, 4), 5 * ROW - 1, 100) == 4
    assert largest_batch(lambda n: rows.nbytes(n, 4), 5 * ROW, 100) == 5


def test_rows_on_the_real_cache():
    """1 MiB holds 136 StreamingLLM rows (136 x 7,680 <= 2^20 < 137 x 7,680) and 13 full ones;
    timed at 3 (capped), the real cache holding exactly the predicted bytes (asserted inside);
    AdaKV's rows differ, so its batch is whatever its first rows' bytes allow: at least the
    full cache's."""
    model = tiny_llama()
    shape = ModelShape.of(model)
    got = {r["press"]: r for r in length_rows(model, shape, None, LENGTH, args())}
    assert (got["streaming_llm"]["largest_batch"], got[FULL]["largest_batch"]) == (MIB // ROW, MIB // FULL_ROW)
    assert got["streaming_llm"]["largest_mib"] == round(MIB // ROW * ROW / MIB, 2)
    assert got["streaming_llm"]["timed_batch"] == got[FULL]["timed_batch"] == 3
    assert got["streaming_llm"]["capped"] and got["streaming_llm"]["held_mib"] == round(3 * ROW / MIB, 2)
    assert got["adakv"]["as_predicted"] and got["adakv"]["largest_batch"] > MIB // FULL_ROW
    assert all(r["tokens_s"] > 0 for r in got.values())


def test_adakv_rows_are_drawn_not_repeated():
    """AdaKV's counts per head differ from row to row (at 1,000 keys; at 100 its window keeps
    every head even): every row asked for is drawn, and more rows hold at least the bytes of
    fewer, 9 rows more than 9 x 200 kept keys a layer (each head pads to its longest row)."""
    shape = ModelShape.of(tiny_llama())
    rows = KeepRows(shape, press_for("adakv", shape, None, 1000), 0.1, 1000, 4, torch.float32, "cpu")
    sizes = [rows.nbytes(n, 4) for n in range(1, 10)]
    assert not rows.uniform and rows.kept[0].shape[0] == 12
    assert all(b >= a for a, b in zip(sizes, sizes[1:])) and sizes[-1] > 9 * 10 * ROW


def test_no_full_row_fits():
    """A budget below one full row (76,800 bytes) still sizes and times the presses, alone."""
    model = tiny_llama()
    got = {r["press"]: r for r in length_rows(model, ModelShape.of(model), None, LENGTH, args(memory_mib=0.05))}
    assert got[FULL]["largest_batch"] == 0 and "tokens_s" not in got[FULL]
    assert got["streaming_llm"]["largest_batch"] == int(0.05 * MIB) // ROW == 6
    assert got["streaming_llm"]["tokens_s"] > 0 and "vs_full" not in got["streaming_llm"]


def test_dry_times_nothing(capsys):
    main("--device cpu --shapes tiny --lengths 64 --memory_mib 1 --dry --presses duo headkv".split())
    out = capsys.readouterr().out
    assert "| tiny | 64 | 1 | duo | 0.1 |" in out and "| tiny | 64 | 1 | full | 1 |" in out
    assert "step_ms" not in out  # no JSON row carries a timing
