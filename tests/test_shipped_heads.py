"""The head files that ship (``head_score/SmolLM2-135M-Instruct.*``, the demo's grid: 3 needles
x 500/1000/1500/2000 tokens x depths 0/25/50/75/100) are what the code makes: the score files
are exactly the aggregation of the shipped trial log, and the detection reproduces its trials
exactly (the 500-token trials, rerun here; every trial is a function of its own key).

The query-focus and needle-mass files (the leaderboard's ``headkv@query-focus``) come from a
second sweep over the same grid (``--method query-focus needle-mass``), whose retrieval files
and trials were byte for byte the shipped ones: their lists follow the shipped trial log's
order (query-focus every trial, needle-mass the passing ones), and the rerun 500-token trials
give the query-focus file's entries for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval_head.experiments.detect import DetectionResult, DetectSettings, detect

HEADS = Path(__file__).resolve().parents[1] / "head_score"
NAME = "SmolLM2-135M-Instruct"
GRID = dict(context_lengths=(500, 1000, 1500, 2000), depth_percents=(0, 25, 50, 75, 100))


def shipped(suffix: str):
    path = HEADS / f"{NAME}{suffix}"
    if not path.is_file():
        pytest.fail(f"{path} does not ship; rerun `make demo`'s detection and commit it")
    return path


def trial_log() -> list[dict]:
    return [json.loads(l) for l in shipped(".trials.jsonl").read_text().splitlines()]


def test_the_manifest_says_the_demo_grid():
    config = json.loads(shipped(".manifest.json").read_text())["config"]
    assert (tuple(config["context_lengths"]), tuple(config["depth_percents"])) == tuple(GRID.values())
    assert config["method"] == ["retrieval"] and config["chat_template"] == "auto"


@pytest.mark.parametrize("method, counted", [("query-focus", "all"), ("needle-mass", "passing")])
def test_the_method_files_say_the_demo_grid_and_count_their_trials(method, counted):
    manifest = json.loads(shipped(f".{method}.manifest.json").read_text())
    config = manifest["config"]
    assert (tuple(config["context_lengths"]), tuple(config["depth_percents"])) == tuple(GRID.values())
    assert manifest["method"] == method and manifest["parameters"]["trials"].startswith(counted)
    scores = json.loads(shipped(f".{method}.json").read_text())
    records = trial_log()
    want = len(records) if counted == "all" else sum(r["passed"] for r in records)
    model = json.loads(shipped(".manifest.json").read_text())["model"]
    assert len(scores) == model["num_layers"] * model["num_heads"]
    assert {len(v) for v in scores.values()} == {want}


def test_the_score_files_are_the_trial_logs_aggregation():
    records = trial_log()
    assert len(records) == 3 * 4 * 5
    model = json.loads(shipped(".manifest.json").read_text())["model"]
    result = DetectionResult(model["num_layers"], model["num_heads"], records, {})
    assert json.loads(shipped(".json").read_text()) == result.head_counter()
    for agg in ("max", "mean"):
        assert json.loads(shipped(f".kv_{agg}.json").read_text()) == result.kv_head_counter(model["num_kv_heads"], agg)


@pytest.mark.slow
def test_detection_reproduces_the_shipped_trials(default_model):
    model, tok, _ = default_model
    fields = ("needle_id", "context_length", "depth_percent", "response_ids", "rouge1_recall", "passed", "head_scores")
    want = {(r["needle_id"], r["depth_percent"]): {f: r[f] for f in fields} for r in trial_log()
            if r["context_length"] == 500}
    got = detect(model, tok, DetectSettings(context_lengths=(500,), depth_percents=GRID["depth_percents"],
                                            method=("retrieval", "query-focus")), progress=False).trials
    assert {(r["needle_id"], r["depth_percent"]): {f: r[f] for f in fields} for r in got} == want
    # query-focus: the file's entry i is the shipped log's trial i (every trial counts)
    focus = json.loads(shipped(".query-focus.json").read_text())
    at = {(r["needle_id"], r["depth_percent"]): i for i, r in enumerate(trial_log()) if r["context_length"] == 500}
    for r in got:
        i = at[(r["needle_id"], r["depth_percent"])]
        grid = [[focus[f"{l}-{h}"][i] for h in range(len(row))] for l, row in enumerate(r["query_focus"])]
        # approx compares flat sequences only: one row per layer
        for got_row, want_row in zip(r["query_focus"], grid, strict=True):
            assert got_row == pytest.approx(want_row, rel=1e-5, abs=1e-7)
