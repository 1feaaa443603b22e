"""Head files in and out (retrieval_head.headfiles.foreign): each format told apart by content,
read with the right unit, converted between query and KV heads with known answers, exported
and read back exactly, and `heads export`'s refusals. Malformed files of each format are
bad-input cases in test_bad_inputs.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval_head.cli import heads
from retrieval_head.errors import UserError
from retrieval_head.headfiles.export import export
from retrieval_head.headfiles.foreign import HeadFile, detect_format, fit, read_head_file_any, to_kv, to_query
from retrieval_head.headfiles.load import load_head_scores
from retrieval_head.headfiles.original import write_head_scores
from retrieval_head.headfiles.ranking import top_heads
from retrieval_head.models.shape import ModelShape

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "head_score"
# The known-answer model: 2 layers, 4 query heads, 2 KV heads (group 2)
SHAPE = ModelShape(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_positions=None, windows=(None, None))
MEANS = [[0.1, 0.7, 0.2, 0.0], [0.0, 0.3, 0.9, 0.4]]  # per query head
KV_MAX = [[0.7, 0.2], [0.3, 0.9]]  # each KV head's group max


def f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.fixture
def original(tmp_path) -> Path:
    """MEANS in the original format, two trials per head (their mean is exact in binary)."""
    path = tmp_path / "model.json"
    write_head_scores(path, {f"{l}-{h}": [MEANS[l][h] * 2, 0.0] for l in range(2) for h in range(4)})
    return path


def duo_folder(root: Path, tsv: str, config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "full_attention_heads.tsv").write_text(tsv)
    (root / "config.json").write_text(json.dumps({"sink_size": 128, "recent_size": 256} if config is None
                                                 else config))
    return root


def test_the_original_format_reads_as_before(original):
    assert detect_format(original) == "original"
    hf = read_head_file_any(original)
    assert (hf.format, hf.unit, hf.complete, hf.extra) == ("original", "query", True, {"trials": 2})
    assert load_head_scores(original).tolist() == MEANS == load_head_scores(original, (2, 4)).tolist()
    assert load_head_scores(original, SHAPE).dtype == torch.float64


def test_unit_conversion_known_answers(original, tmp_path):
    assert to_kv(f64(MEANS), 2).tolist() == KV_MAX
    assert to_query(f64(KV_MAX), 2).tolist() == [[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.9, 0.9]]
    # a query-unit file read per KV head: the group max (by ModelShape, or (layers, kv_heads))
    assert load_head_scores(original, SHAPE, unit="kv").tolist() == KV_MAX
    assert load_head_scores(original, (2, 2), unit="kv").tolist() == KV_MAX
    # a KV-unit file read per query head: each query head its KV head's score
    folder = duo_folder(tmp_path / "duo", "0.5\t1\n0\t0.25\n")
    expected = [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.25, 0.25]]
    assert load_head_scores(folder, SHAPE).tolist() == expected
    assert load_head_scores(folder, (2, 4)).tolist() == expected  # the group from 4 query / 2 KV heads
    assert load_head_scores(folder, SHAPE, unit="kv").tolist() == [[0.5, 1.0], [0.0, 0.25]]
    with pytest.raises(UserError, match="per KV head; reading it per query head needs the model's number of query"):
        load_head_scores(folder)  # no shape: how many query heads per KV head is unknown
    with pytest.raises(UserError, match="has 2 KV heads per layer, which does not divide the model's 3 query heads"):
        load_head_scores(folder, (2, 3))
    wrong = ModelShape(**{**SHAPE.__dict__, "num_kv_heads": 4})
    with pytest.raises(UserError, match="is for 2 layers x 2 KV heads, the model has 2 layers x 4 KV heads"):
        load_head_scores(folder, wrong)


def test_detection_by_content_not_name(tmp_path):
    files = {"a.txt": '[["0-1", 0.5], ["0-0", 0.25]]', "b.json": '{"0": [1], "1": []}',
             "c.data": '{"layer_0": [1, 3]}', "d.json": '{"0-0": [1.0]}', "e.json": "1\t0\n0\t1\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "config.json").write_text('{"sink_size": 64, "recent_size": 256}')
    got = {name: detect_format(tmp_path / name) for name in files}
    assert got == {"a.txt": "qrhead", "b.json": "razor", "c.data": "layers", "d.json": "original", "e.json": "duo"}
    units = {name: read_head_file_any(tmp_path / name).unit for name in files}
    assert units == {"a.txt": "query", "b.json": "kv", "c.data": "query", "d.json": "query", "e.json": "kv"}
    (tmp_path / "full_attention_heads.tsv").write_text(files["e.json"])
    assert detect_format(tmp_path) == "duo"  # a folder holding full_attention_heads.tsv


def test_duo_as_duoattention_publishes_it(tmp_path):
    """Its trained gates stray just outside [0, 1] and are clipped, as its loader does; its
    config.json holds every training option besides sink_size and recent_size."""
    tsv = "-9.584426879882812500e-05\t5.585937500000000000e-01\n1.000000000000000000e+00\t-1.4e-03\n"
    cfg = {"model_name": "models/Mistral-7B-Instruct-v0.2", "sink_size": 128, "recent_size": 256, "threshold": 0.5}
    folder = duo_folder(tmp_path / "pattern", tsv, cfg)
    for path in (folder, folder / "full_attention_heads.tsv"):  # the folder or the TSV itself
        hf = read_head_file_any(path)
        assert (hf.format, hf.unit, hf.complete) == ("duo", "kv", True)
        assert hf.scores.tolist() == [[0.0, 0.55859375], [1.0, 0.0]]
        assert hf.extra == {"sink_size": 128, "recent_size": 256}


def test_keep_sets_name_only_some_heads(tmp_path):
    """RazorAttention drops the layers that keep no head; QRHead lists may be cut short: the
    heads not named score 0 and the file fits any model that holds the ids it names."""
    razor = tmp_path / "razor.json"
    razor.write_text(json.dumps({"1": [1]}, indent=3))  # layer 0 kept nothing: absent
    hf = read_head_file_any(razor)
    assert (hf.format, hf.complete, hf.keep_set, hf.scores.tolist()) == ("razor", False, True, [[0.0, 0.0],
                                                                                                  [0.0, 1.0]])
    assert load_head_scores(razor, SHAPE).tolist() == [[0.0] * 4, [0.0, 0.0, 1.0, 1.0]]
    assert load_head_scores(razor, (2, 2), unit="kv").tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert load_head_scores(razor, (3, 4), unit="kv").tolist() == [[0.0] * 4, [0.0, 1.0, 0.0, 0.0], [0.0] * 4]
    with pytest.raises(UserError, match="names only some, so how many the model has per layer is unknown"):
        load_head_scores(razor, (2, 4))  # per query head, the KV heads' count unknown: refused, not guessed
    qr = tmp_path / "qr.json"
    qr.write_text(json.dumps([["1-2", 0.9], ["0-1", 0.7]]))
    hf = read_head_file_any(qr)
    assert (hf.format, hf.complete) == ("qrhead", False)
    assert load_head_scores(qr, SHAPE).tolist() == [[0.0, 0.7, 0.0, 0.0], [0.0, 0.0, 0.9, 0.0]]
    with pytest.raises(UserError, match="names head 2, the model has 2 heads per layer"):
        load_head_scores(qr, (2, 2))


def test_niah_head_score_reads_every_format(tmp_path, original):
    """--head_score of the mask script goes through load_ranking: a DuoAttention folder ranks
    a 2 x 4 (2 KV heads) model's KV heads (its own unit, with no --unit) or, with --unit
    query, its query heads (each its KV head's score)."""
    from retrieval_head.cli.mask import head_scores_for
    from retrieval_head.experiments.mask import NiahSettings

    folder = duo_folder(tmp_path / "duo", "0.5\t1\n0\t0.25\n")
    st = NiahSettings(mask_top=(2,), head_score=str(folder), unit="query")
    scores, unit = head_scores_for(st, "m", SHAPE)
    assert (scores.tolist(), unit) == ([[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.25, 0.25]], "query")
    for given in ("kv", None):  # --unit kv, or the file's own unit
        scores, unit = head_scores_for(NiahSettings(mask_top=(2,), head_score=str(folder), unit=given), "m", SHAPE)
        assert (scores.tolist(), unit) == ([[0.5, 1.0], [0.0, 0.25]], "kv")


# ---------------------------------------------------------------- export round trips


def test_duo_round_trip_and_numpy_loadtxt(original, tmp_path):
    src = read_head_file_any(original)
    out = tmp_path / "duo"
    done = export(src, "duo", out, top=2, kv_heads=2, sink=4, recent=32)
    keep = [[1.0, 0.0], [0.0, 1.0]]  # the 2 best KV heads by group max: 1-1 (0.9), 0-0 (0.7)
    assert done.grid.tolist() == keep and [p.name for p in done.paths] == ["full_attention_heads.tsv", "config.json"]
    array = np.loadtxt(out / "full_attention_heads.tsv", dtype=float, delimiter="\t")
    assert array.shape == (2, 2) and array.tolist() == keep  # what DuoAttention's and kvpress's loaders read
    assert json.loads((out / "config.json").read_text()) == {"sink_size": 4, "recent_size": 32}
    back = read_head_file_any(out)
    assert (back.format, back.unit, back.scores.tolist(), back.extra) == ("duo", "kv", keep,
                                                                           {"sink_size": 4, "recent_size": 32})
    export(src, "duo", tmp_path / "defaults", threshold=0.3, kv_heads=2)
    assert read_head_file_any(tmp_path / "defaults").extra == {"sink_size": 64, "recent_size": 256}


def test_razor_round_trip(original, tmp_path):
    out = tmp_path / "razor.json"
    done = export(read_head_file_any(original), "razor", out, threshold=0.3, kv_heads=2)
    keep = [[1.0, 0.0], [1.0, 1.0]]  # KV_MAX >= 0.3
    assert done.grid.tolist() == keep
    assert json.loads(out.read_text()) == {"0": [0], "1": [0, 1]}
    back = read_head_file_any(out)
    assert (back.format, back.unit) == ("razor", "kv")
    assert fit(back, "kv", 2, 4, 2).tolist() == keep == load_head_scores(out, SHAPE, unit="kv").tolist()


def test_layers_round_trip(original, tmp_path):
    out = tmp_path / "layers.json"
    done = export(read_head_file_any(original), "layers", out, top=3)
    keep = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]  # 1-2 (0.9), 0-1 (0.7), 1-3 (0.4)
    assert done.grid.tolist() == keep
    assert json.loads(out.read_text()) == {"layer_0": [1], "layer_1": [2, 3]}
    back = read_head_file_any(out)
    assert (back.format, back.unit) == ("layers", "query")
    assert load_head_scores(out, SHAPE).tolist() == keep


def test_qrhead_round_trip(original, tmp_path):
    out = tmp_path / "qr.json"
    export(read_head_file_any(original), "qrhead", out)
    listed = json.loads(out.read_text())
    assert listed == [[f"{l}-{h}", s] for l, h, s in top_heads(f64(MEANS))]  # all heads, ties layer-major
    assert listed[:3] == [["1-2", 0.9], ["0-1", 0.7], ["1-3", 0.4]]
    back = read_head_file_any(out)
    assert (back.format, back.unit, back.complete) == ("qrhead", "query", True)
    assert back.scores.tolist() == MEANS  # exactly: JSON floats round-trip


def test_kv_unit_sources_convert(tmp_path):
    """A per-KV-head file exported to a per-query-head format needs --heads; to duo it is as is."""
    folder = duo_folder(tmp_path / "duo", "0.5\t1\n0\t0.25\n")
    src = read_head_file_any(folder)
    with pytest.raises(UserError, match="needs the model's number of query heads; pass --layers/--heads/--kv_heads"):
        export(src, "layers", tmp_path / "l.json", top=2)
    export(src, "layers", tmp_path / "l.json", top=2, heads=4)
    assert json.loads((tmp_path / "l.json").read_text()) == {"layer_0": [2, 3], "layer_1": []}
    export(src, "razor", tmp_path / "r.json", threshold=0.5)
    assert json.loads((tmp_path / "r.json").read_text()) == {"0": [0, 1], "1": []}
    kv_max = tmp_path / "m.kv_max.json"  # the original format, per KV head: --unit kv says so
    write_head_scores(kv_max, {"0-0": [0.5], "0-1": [1.0], "1-0": [0.0], "1-1": [0.25]})
    export(read_head_file_any(kv_max, file_unit="kv"), "duo", tmp_path / "d", threshold=0.5)
    assert np.loadtxt(tmp_path / "d" / "full_attention_heads.tsv", delimiter="\t").tolist() == [[1, 1], [0, 0]]


def test_published_files_detect_as_the_original():
    if not PUBLISHED.is_dir():
        pytest.skip("../shared/reference is not present")
    for f in sorted(PUBLISHED.glob("*.json")):
        hf = read_head_file_any(f)
        assert (hf.format, hf.unit) == ("original", "query") and torch.equal(hf.scores, load_head_scores(f)), f.name


# ---------------------------------------------------------------- the CLI


def run(argv, capsys) -> tuple[int, str, str]:
    code = heads.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_heads_export_cli(original, tmp_path, capsys):
    out = tmp_path / "razor.json"
    code, stdout, _ = run(["export", str(original), "--to", "razor", "--out", str(out), "--top", "2",
                           "--kv_heads", "2"], capsys)
    assert code == 0 and stdout.strip() == f"razor: kept 2 of 4 KV heads (2 layers x 2) -> {out}"
    assert json.loads(out.read_text()) == {"0": [0], "1": [1]}
    code, stdout, _ = run(["top", str(out), "-k", "1"], capsys)  # any format: top in its own unit
    assert code == 0 and stdout.splitlines()[0].startswith("per KV head (razor file)")
    before = out.read_bytes()
    refusals = [
        (["--to", "razor", "--out", str(out), "--kv_heads", "2"], "needs exactly one of --top K or --threshold T"),
        (["--to", "layers", "--out", str(tmp_path / "x.json"), "--top", "2", "--threshold", "0.5"], "pass only one"),
        (["--to", "razor", "--out", str(out), "--top", "1", "--kv_heads", "2"], "exists; pass --overwrite"),
        (["--to", "duo", "--out", str(tmp_path / "d"), "--top", "1"], "needs the model's number of KV heads"),
        (["--to", "duo", "--out", str(tmp_path / "d"), "--top", "1", "--kv_heads", "3"], "3 KV heads do not divide"),
        (["--to", "qrhead", "--out", str(tmp_path / "q.json"), "--top", "3"], "--to qrhead writes every head"),
        (["--to", "layers", "--out", str(tmp_path / "l.json"), "--top", "9"], "--top 9 is not 1..8"),
        (["--to", "layers", "--out", str(tmp_path / "l.json"), "--threshold", "2"], "keeps no head"),
        (["--to", "razor", "--out", str(tmp_path / "r.json"), "--top", "1", "--sink", "4"], "no place for them"),
        (["--to", "duo", "--out", str(out), "--top", "1", "--kv_heads", "2"], "is a file; --to duo writes a folder"),
        (["--to", "layers", "--unit", "kv", "--out", str(tmp_path / "l.json"), "--top", "1"], "needs the model's "
                                                                                               "number of query"),
    ]
    for args, phrase in refusals:
        code, stdout, err = run(["export", str(original)] + args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert phrase in lines[0], (args, lines[0])
    assert out.read_bytes() == before  # refused: nothing changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "razor.json"]  # nor created
    code, _, _ = run(["export", str(out), "--to", "razor", "--out", str(out), "--top", "1", "--overwrite"], capsys)
    assert code == 0 and json.loads(out.read_text()) == {"0": [0], "1": []}  # a tie of 1s: layer-major
    code, _, err = run(["export", str(out), "--to", "razor", "--out", str(out), "--top", "1", "--unit", "query"],
                       capsys)
    assert code == 2 and "--unit query contradicts it" in err


def test_heads_compare_refuses_mixed_units(original, tmp_path, capsys):
    folder = duo_folder(tmp_path / "duo", "0.5\t1\n0\t0.25\n")
    code, _, err = run(["compare", str(original), str(folder)], capsys)
    assert code == 2 and "compare files of one unit" in err and err.count("\n") == 1
    code, stdout, _ = run(["compare", str(folder), str(folder), "-k", "1"], capsys)
    assert code == 0 and "shared heads:   0-1" in stdout


def test_headfile_is_typed():
    hf = HeadFile(f64([[1.0]]), "kv", "razor", complete=False)
    assert hf.keep_set and hf.where == "head_score file <data>"


def test_export_reads_the_model_shape_from_the_manifest_beside_the_file(original, tmp_path, capsys):
    """<model>.manifest.json (detection's) says 2 layers x 4 heads, 2 KV heads: --to duo needs no
    --kv_heads; a flag still wins over the manifest; a manifest of another shape is named."""
    manifest = original.with_name("model.manifest.json")
    manifest.write_text(json.dumps({"model": {"num_layers": 2, "num_heads": 4, "num_kv_heads": 2}}))
    code, stdout, err = run(["export", str(original), "--to", "duo", "--out", str(tmp_path / "d"), "--top", "2"],
                            capsys)
    assert code == 0 and err == "" and "kept 2 of 4 KV heads (2 layers x 2)" in stdout
    by_flag = tmp_path / "flag"
    assert run(["export", str(original), "--to", "duo", "--out", str(by_flag), "--top", "2", "--kv_heads", "2"],
               capsys)[0] == 0
    tsv = "full_attention_heads.tsv"
    assert (tmp_path / "d" / tsv).read_text() == (by_flag / tsv).read_text()
    # the flag wins: 1 KV head per layer (every query head one group) whatever the manifest says
    code, stdout, _ = run(["export", str(original), "--to", "razor", "--out", str(tmp_path / "r.json"), "--top", "1",
                           "--kv_heads", "1"], capsys)
    assert code == 0 and "kept 1 of 2 KV heads (2 layers x 1)" in stdout
    manifest.write_text(json.dumps({"model": {"num_layers": 3, "num_heads": 4, "num_kv_heads": 2}}))
    code, _, err = run(["export", str(original), "--to", "duo", "--out", str(tmp_path / "d3"), "--top", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "model.manifest.json" in err and "--layers" in err
    assert not (tmp_path / "d3").exists()
    manifest.write_text("not a manifest")  # unreadable: as if there were none
    code, _, err = run(["export", str(original), "--to", "duo", "--out", str(tmp_path / "d4"), "--top", "2"], capsys)
    assert code == 2 and "needs the model's number of KV heads" in err


def test_a_kv_file_shares_its_models_manifest(tmp_path):
    from retrieval_head.store.manifest import shape_beside

    (tmp_path / "M.manifest.json").write_text(json.dumps({"model": {"num_layers": 30, "num_heads": 9,
                                                                    "num_kv_heads": 3}}))
    (tmp_path / "M.echo.manifest.json").write_text(json.dumps({"model": {"num_layers": 30, "num_heads": 9,
                                                                         "num_kv_heads": 3}, "method": "echo"}))
    want = {"layers": 30, "heads": 9, "kv_heads": 3}
    for name, manifest in (("M.json", "M"), ("M.kv_max.json", "M"), ("M.kv_mean.json", "M"), ("M.echo.json", "M.echo")):
        assert shape_beside(tmp_path / name) == (tmp_path / f"{manifest}.manifest.json", want), name
    assert shape_beside(tmp_path / "N.json") is None and shape_beside(tmp_path / "M.manifest.json") is None
