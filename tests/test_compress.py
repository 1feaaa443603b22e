"""The compression experiment end to end on a tiny model: conditions, what each result
records (kept and streamed heads, sink, recent, phase, unit, the exact KV cache kept), the
curve pooled over runs, and the figure."""

import json

import pytest
from helpers import make_inputs

from retrieval_head.cli import mask as cli_niah
from retrieval_head.experiments.compress import curves, table


def _record(folder, kind, k, seed, score, kept, length=300, depth=50):
    folder.mkdir(parents=True, exist_ok=True)
    mask = {"kind": kind, "k": k, "seed": seed, "mode": None if kind == "none" else "stream"}
    if kind != "none":
        mask["kv_kept"] = kept
    rec = {"context_length": length, "depth_percent": depth, "score": score, "mask": mask}
    (folder / f"M_len_{length}_depth_{depth * 100}.json").write_text(json.dumps(rec))


def test_curves_pool_runs_and_spread_over_seeds(tmp_path):
    for run, (top, r0, r1) in {"needle0": (100, 20, 40), "needle1": (50, 60, 0)}.items():
        _record(tmp_path / run / "none", "none", 0, None, 100, None)
        _record(tmp_path / run / "top", "keep_top", 2, None, top, 0.5)
        _record(tmp_path / run / "all", "keep_top", 0, None, 10, 0.1)
        _record(tmp_path / run / "r0", "keep_random", 2, 0, r0, 0.6)
        _record(tmp_path / run / "r1", "keep_random", 2, 1, r1, 0.7)
    c = curves(sorted(tmp_path.glob("*/*")))
    assert c["reference"] == 100
    assert c["top"] == [(0.1, 10, 0), (0.5, 75, 2)]
    # seed 0 pools to 40, seed 1 to 20: the mean 30, the range 20-40; streaming all starts the line
    assert c["random"] == [(0.1, 10, 10, 10, 0, 1), (pytest.approx(0.65), 30, 20, 40, 2, 2)]
    assert "| 2 | 25.0% | 50.0% | 75.0 | 65.0% | 30.0 (20-40) |" in table(c, heads=8)


@pytest.mark.full  # the compression experiment end to end (~20 s): `make test` only
def test_keep_full_runs_records_and_draws(tmp_path, default_tokenizer):
    p = make_inputs(tmp_path, default_tokenizer)
    out = tmp_path / "out"
    argv = ["--model_path", str(p["tiny"]), "--needles", str(p["needles_ok"]), "--context_lengths", "300",
            "--depth_percents", "20", "80", "--max_new_tokens", "4", "--mask_top", "0", "--keep_full", "2", "-2", "0",
            "--seeds", "0", "1", "--sink", "2", "--recent", "8", "--head_score", str(p["hs_tiny"]), "--quiet",
            "--output_dir", str(out)]
    assert cli_niah.cli(argv) == 0
    folders = sorted(d.name for d in out.iterdir() if d.is_dir())
    assert folders == ["tiny", "tiny_stream_all_s2_r8", "tiny_stream_keep_random2_s2_r8_seed0",
                       "tiny_stream_keep_random2_s2_r8_seed1", "tiny_stream_keep_top2_s2_r8"]
    rec = json.loads((out / "tiny_stream_keep_top2_s2_r8" / "tiny_len_300_depth_2000.json").read_text())
    m = rec["mask"]
    # hs_tiny ranks 1-3, 1-2 first: both read KV head 1 of layer 1, which keeps its 300 keys;
    # the other three KV heads keep sink + recent = 10 of 300
    assert m["kept"] == [[1, 2], [1, 3]] and m["mode"] == "stream" and (m["sink"], m["recent"]) == (2, 8)
    assert m["phase"] == "decode" and m["unit"] == "query" and len(m["heads"]) == 6
    assert m["kv_kept_exact"] == "11/40" and m["kv_kept"] == 11 / 40
    everything = json.loads((out / "tiny_stream_all_s2_r8" / "tiny_len_300_depth_8000.json").read_text())["mask"]
    assert everything["kv_kept_exact"] == "1/30" and everything["kept"] == []
    assert (out / "tiny_compression_decode_s2_r8.png").stat().st_size > 10_000
    assert not (out / "tiny_side_by_side.png").exists()  # one masking condition: nothing to set side by side
    # the KV unit: K counts KV heads, each streamed with all its query heads
    kv = tmp_path / "kv"
    assert cli_niah.cli(argv[:-1] + [str(kv), "--unit", "kv", "--phase", "all", "--keep_full", "1"]) == 0
    rec = json.loads((kv / "tiny_stream_keep_top1_s2_r8_all_kv" / "tiny_len_300_depth_2000.json").read_text())
    assert rec["mask"]["unit"] == "kv" and rec["mask"]["kept"] == [[1, 1]] and rec["mask"]["phase"] == "all"
    assert rec["mask"]["kv_kept_exact"] == "11/40"


def test_curves_and_table_show_the_bytes_the_real_cache_held(tmp_path):
    _record(tmp_path / "none", "none", 0, None, 100, None)
    for name, kind, k, seed, held in [("top", "keep_top", 2, None, 2**20), ("r0", "keep_random", 2, 0, 2**21),
                                      ("r1", "keep_random", 2, 1, 2**22)]:
        _record(tmp_path / name, kind, k, seed, 50, 0.5)
        f = next((tmp_path / name).glob("*.json"))
        rec = json.loads(f.read_text())
        rec["mask"].update(cache="real", kv_bytes=held, kv_bytes_full=2**23)
        f.write_text(json.dumps(rec))
    _record(tmp_path / "masked", "keep_top", 4, None, 60, 0.7)  # masked: no bytes, no measured point
    c = curves(sorted(tmp_path.glob("*")))
    assert c["measured"] == {("keep_top", 2): (2**20, 2**23), ("keep_random", 2): (3 * 2**20, 2**23)}
    t = table(c, heads=8)
    assert "| 2 | 25.0% | 50.0% | 50.0 | 50.0% | 50.0 (50-50) | 1.00 MiB (12.5%) | 3.00 MiB (37.5%) |" in t
    assert "| 4 | 50.0% | 70.0% | 60.0 | — | — | — | — |" in t
    assert "| full cache | 100% | 100% | 100.0 | | | 8.00 MiB | |" in t
