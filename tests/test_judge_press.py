"""The judge with a press (``--press duo|headkv --budget F``): the conditions it builds are
exactly the expected list (each method's file read per KV head, a seeded random ranking per
seed, the full cache), the random control is seeded, and a run on a tiny random-weight model
writes records carrying the press, its parameters, the budget, the bytes held and the method,
with a table whose cells are the records' means."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from helpers import make_inputs, one_thread

from retrieval_head.cli import judge
from retrieval_head.experiments.judge import labelled, press_judge_conditions
from retrieval_head.experiments.press import random_ranking
from retrieval_head.experiments.settings import JUDGE_KS, JudgeSettings
from retrieval_head.models.shape import ModelShape

SHAPE = ModelShape(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_positions=1024, windows=(None,) * 2)
RETRIEVAL = [[0.9, 0.0, 0.0, 0.2], [0.0, 0.5, 0.0, 0.0]]  # per query head; per KV head: each pair's max
INDUCTION = [[0.0, 0.0, 0.7, 0.0], [0.0, 0.0, 0.0, 0.3]]
TINY_RUN = ["--context_lengths", "120", "--depth_percents", "50", "--max_new_tokens", "3", "--quiet"]


def write_scores(path, grid):
    path.write_text(json.dumps({f"{l}-{h}": [float(v)] for l, row in enumerate(grid) for h, v in enumerate(row)}))
    return path


@pytest.fixture
def files(tmp_path):
    return labelled((str(write_scores(tmp_path / "tiny.json", RETRIEVAL)),
                     str(write_scores(tmp_path / "tiny.induction.json", INDUCTION))), "tiny")


def test_the_conditions_are_each_methods_press_per_budget_random_per_seed_and_the_full_cache(files):
    cs = press_judge_conditions(files, "headkv", (0.5, 0.25), (3, 7), SHAPE, ("window=8",))
    assert [c.folder for c in cs] == [
        "none", "retrieval/headkv_b0.5", "retrieval/headkv_b0.25", "induction/headkv_b0.5", "induction/headkv_b0.25",
        "random/headkv_b0.5_seed3", "random/headkv_b0.25_seed3", "random/headkv_b0.5_seed7",
        "random/headkv_b0.25_seed7"]
    assert [(c.kind, c.method, c.seed) for c in cs] == [("none", None, None)] + [("press", m, None) for m in (
        "retrieval", "retrieval", "induction", "induction")] + [("press", "random", s) for s in (3, 3, 7, 7)]
    assert cs[0].mask is None and [c.mask.budget for c in cs[1:]] == [0.5, 0.25] * 4
    assert all(c.mask.press.name == "headkv" and c.mask.press.window == 8 for c in cs[1:])  # --press_args applied
    # each file read per KV head (each group's max), as the leaderboard's headkv@<method>
    assert cs[1].mask.press.scores.tolist() == [[0.9, 0.2], [0.5, 0.0]]
    assert cs[3].mask.press.scores.tolist() == [[0.0, 0.7], [0.0, 0.3]]
    for c, seed in zip(cs[5:], (3, 3, 7, 7)):
        assert torch.equal(c.mask.press.scores, random_ranking(SHAPE, seed))


def test_the_random_control_is_seeded(files):
    first = press_judge_conditions(files, "duo", (0.5,), (0, 1), SHAPE)
    again = press_judge_conditions(files, "duo", (0.5,), (0, 1), SHAPE)
    rankings = lambda cs: [c.mask.press.scores for c in cs if c.method == "random"]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(rankings(first), rankings(again)))  # same seeds, same ranking
    assert not torch.equal(*rankings(first))  # another seed, another ranking
    assert rankings(first)[0].shape == (SHAPE.num_layers, SHAPE.num_kv_heads)


def test_settings_masking_keeps_its_ks_a_press_has_none():
    assert JudgeSettings().mask_top == JUDGE_KS and JudgeSettings().levels() == JUDGE_KS
    st = JudgeSettings(press="duo", budget=(0.5, 0.1))
    assert st.mask_top is None and st.levels() == (0.5, 0.1)
    assert {"press", "budget", "press_args"} <= set(st.applied()) and "mask_top" not in st.applied()
    assert not {"press", "budget", "press_args"} & set(JudgeSettings().applied())  # masking's manifest as before


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory, default_tokenizer):
    return make_inputs(tmp_path_factory.mktemp("judgepress"), default_tokenizer)


def test_the_judge_with_a_press_on_a_tiny_model(tiny_inputs, tmp_path, capsys):
    retrieval = write_scores(tmp_path / "tiny.json", RETRIEVAL)
    induction = write_scores(tmp_path / "tiny.induction.json", INDUCTION)
    out = tmp_path / "judge"
    argv = ["--model_path", str(tiny_inputs["tiny"]), "--needles", str(tiny_inputs["needles_ok"]), *TINY_RUN,
            "--head_score", str(retrieval), str(induction), "--press", "duo", "--budget", "0.5", "0.25",
            "--seeds", "0", "1", "--press_args", "recent=16", "--output_dir", str(out)]
    with one_thread():
        assert judge.cli(argv) == 0
    recs = [json.loads(x) for x in (out / "tiny.judge.jsonl").read_text().splitlines()]
    assert len(recs) == 1 + 2 * 2 + 2 * 2  # full cache; each method at each budget; random per seed and budget
    full, pressed = recs[0], recs[1:]
    assert full["mask"]["heads"] == [] and "press" not in full["mask"]
    got = [(r["mask"]["method"], r["mask"]["budget"], r["mask"]["seed"]) for r in pressed]
    assert got == [("retrieval", 0.5, None), ("retrieval", 0.25, None), ("induction", 0.5, None),
                   ("induction", 0.25, None), ("random", 0.5, 0), ("random", 0.25, 0), ("random", 0.5, 1),
                   ("random", 0.25, 1)]
    for r in pressed:
        m = r["mask"]
        assert m["press"] == "duo" and m["params"]["recent"] == 16 and m["params"]["scores"] == "tensor [2, 2]"
        assert m["kv_bytes"] == pytest.approx(m["kv_kept"] * m["kv_bytes_full"]) and 0 < m["kv_kept"] <= 1
        per_token = 2 * 2 * 2 * 8 * 4  # K and V x 2 layers x 2 KV heads x head_dim 8 x float32
        assert m["kv_bytes_full"] == r["context_length"] * per_token  # the prompt is context_length tokens
        assert m["kv_bytes"] < m["kv_bytes_full"]  # a budget below 1 holds fewer bytes
    held = {(r["mask"]["method"], r["mask"]["seed"], r["mask"]["budget"]): r["mask"]["kv_bytes"] for r in pressed}
    assert all(held[m, seed, 0.25] < held[m, seed, 0.5] for m, seed, _ in held)  # a smaller budget holds less
    table = (out / "tiny.judge.md").read_text()
    assert "press duo keeping each budget of the KV cache" in table and "Higher wins" in table
    assert "| KV heads ranked by | budget = 0.5 | budget = 0.25 |" in table
    mean = lambda method, b: statistics.fmean(  # noqa: E731
        r["score"] for r in pressed if r["mask"]["method"] == method and r["mask"]["budget"] == b)
    assert f"| full cache | {full['score']:.1f} | {full['score']:.1f} |" in table
    assert f"| duo by retrieval | {mean('retrieval', 0.5):.1f} | {mean('retrieval', 0.25):.1f} |" in table
    assert f"| duo by induction | {mean('induction', 0.5):.1f} | {mean('induction', 0.25):.1f} |" in table
    assert "| duo by random (mean [min, max]) |" in table
    assert (out / "tiny.judge.png").stat().st_size > 0
    man = json.loads((out / "tiny.judge.manifest.json").read_text())
    assert man["config"]["press"] == "duo" and man["config"]["budget"] == [0.5, 0.25]
    assert "mask_top" not in man["config"] and len(man["conditions"]) == len(recs)
