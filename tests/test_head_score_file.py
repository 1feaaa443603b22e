"""A head-score file is checked whole before any head is ranked: which defect gets which
message (in memory, by validate_head_scores), what reads back from disk, and the published
files of the original work (../shared/reference, skipped without it) still load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from retrieval_head.cli import heads
from retrieval_head.errors import UserError
from retrieval_head.headfiles.load import load_head_scores
from retrieval_head.headfiles.original import read_head_file, validate_head_scores, write_head_scores

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT.parent / "shared" / "reference" / "head_score"


def grid(layers=2, n_heads=3, trials=2):
    """A well-formed file's object: head (l, h) scored l + h/10 in every trial."""
    return {f"{l}-{h}": [l + h / 10] * trials for l in range(layers) for h in range(n_heads)}


def edit(**heads_):
    """The grid with some heads' values replaced (``h0_1=[...]`` sets "0-1")."""
    d = grid()
    d.update({k[1:].replace("_", "-"): v for k, v in heads_.items()})
    return d


def test_a_good_file_validates_to_its_heads():
    keys = validate_head_scores(grid())
    assert keys == {(l, h): [l + h / 10] * 2 for l in range(2) for h in range(3)}
    assert validate_head_scores({"0-0": [1, 0.5]}) == {(0, 0): [1, 0.5]}  # ints are numbers


# (the defect, the data, a phrase its message must hold)
DEFECTS = [
    ("not an object", [1, 2], "holds no heads"),
    ("empty object", {}, "holds no heads"),
    ("key not layer-head", dict(grid(), **{"0_3": [0.0, 0.0]}), "key '0_3' is not 'layer-head'"),
    ("negative layer", dict(grid(), **{"-1-0": [0.0, 0.0]}), "key '-1-0' is not 'layer-head'"),
    ("key with spaces", dict(grid(), **{" 1-0": [0.0, 0.0]}), "key ' 1-0' is not 'layer-head'"),
    ("head spelled twice", dict(grid(), **{"01-2": [0.0, 0.0]}), "names head 1-2 twice ('1-2' and '01-2')"),
    ("a head missing", {k: v for k, v in grid().items() if k != "1-1"}, "5 heads, not a full 2 x 3 grid (no 1-1)"),
    ("value not a list", edit(h1_0=0.5), "1-0 is 0.5, not a list of numbers"),
    ("value an object", edit(h1_0={"a": 1}), "1-0 is an object, not a list of numbers"),
    ("NaN", edit(h1_2=[0.5, math.nan]), "1-2 holds NaN at trial 1"),
    ("Infinity", edit(h0_0=[math.inf, 0.5]), "0-0 holds Infinity at trial 0"),
    ("-Infinity", edit(h0_0=[-math.inf, 0.5]), "0-0 holds -Infinity at trial 0"),
    ("a boolean", edit(h0_1=[0.5, False]), "0-1 holds false (a boolean) at trial 1"),
    ("a string", edit(h0_1=["0.5", 0.5]), '0-1 holds "0.5" (a string) at trial 0'),
    ("null", edit(h0_1=[None, 0.5]), "0-1 holds null at trial 0"),
    ("a nested list", edit(h0_1=[[0.5], 0.5]), "0-1 holds a list at trial 0"),
    ("an int too large for a float", edit(h0_1=[10**400, 0.5]), "0-1 holds 1000000000"),
    ("a shorter list", edit(h1_1=[0.5]), "not the same length (0-0 has 2 scores, 1-1 has 1)"),
    ("a longer list", edit(h0_2=[0.5, 0.5, 0.5]), "not the same length (0-0 has 2 scores, 0-2 has 3)"),
    ("one empty list among full ones", edit(h1_2=[]), "not the same length (0-0 has 2 scores, 1-2 has 0)"),
]


@pytest.mark.parametrize("what,data,phrase", DEFECTS, ids=[d[0] for d in DEFECTS])
def test_each_defect_has_its_message(what, data, phrase):
    with pytest.raises(UserError) as e:
        validate_head_scores(data, "f.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("head_score file f.json") and phrase in msg, msg


def test_shape_is_checked_before_values():
    with pytest.raises(UserError, match="is for 2 layers x 3 heads, the model has 4 x 4"):
        validate_head_scores(edit(h0_0=[math.nan, 0.5]), "f.json", shape=(4, 4))
    assert len(validate_head_scores(grid(), "f.json", shape=(2, 3))) == 6


def test_zero_trials_load_as_zeros(tmp_path):
    """0 counted trials (every list empty) is a valid file: every head scores 0."""
    path = tmp_path / "none.json"
    write_head_scores(path, grid(trials=0))
    scores = load_head_scores(path, shape=(2, 3))
    assert scores.dtype == torch.float64 and torch.equal(scores, torch.zeros(2, 3, dtype=torch.float64))


def test_load_gives_the_mean_per_head(tmp_path):
    path = tmp_path / "ok.json"
    write_head_scores(path, dict(grid(), **{"1-2": [0.0, 1]}))
    assert load_head_scores(path).tolist() == [[0.0, 0.1, 0.2], [1.0, 1.1, 0.5]]


def test_a_key_written_twice_on_disk_is_refused(tmp_path):
    """json.loads keeps the last of two equal keys; the file reader refuses them."""
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(grid())[:-1] + ', "0-1": [9.0, 9.0]}\n')
    with pytest.raises(UserError, match="names key '0-1' twice"):
        read_head_file(path)


def test_nan_written_by_json_is_refused_from_disk(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(edit(h1_0=[math.nan, 0.5])) + "\n")  # json.dumps writes NaN, json.loads reads it
    assert "NaN" in path.read_text()
    with pytest.raises(UserError, match="1-0 holds NaN at trial 0"):
        load_head_scores(path)


@pytest.mark.parametrize("data,phrase", [(edit(h1_1=[0.5]), "not the same length"),
                                         (edit(h0_1=[math.inf, 0.5]), "0-1 holds Infinity"),
                                         (edit(h0_1=[True, 0.5]), "0-1 holds true (a boolean)")])
def test_heads_top_gives_the_same_one_line_error(tmp_path, capsys, data, phrase):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data) + "\n")
    assert heads.main(["top", str(path)]) == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert out.out == "" and len(err) == 1 and err[0].startswith("error: head_score file ") and phrase in err[0], err


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="../shared/reference is not present")
def test_published_files_pass_the_checks():
    """The original work's 7 files: one score per trial in every list, all finite."""
    files = sorted(PUBLISHED.glob("*.json"))
    assert len(files) == 7
    for f in files:
        data = read_head_file(f)
        validate_head_scores(data, f)
        assert len({len(v) for v in data.values()}) == 1, f.name
        s = load_head_scores(f)
        assert s.shape in ((32, 32), (40, 40)) and bool(torch.isfinite(s).all()) and float(s.min()) >= 0, f.name
