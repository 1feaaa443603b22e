"""End to end on the embedded SmolLM2 at <= 1K tokens: the CLI's outputs, the original's
reading snippet, refusals, and re-scoring saved prompts with plain eager attention."""

import json

import numpy as np
import pytest
from helpers import eager_rescore

from retrieval_head.cli import detect as cli_detect

pytestmark = pytest.mark.full  # the detection script end to end on SmolLM2 (~130 s): `make test` only

GRID = ["--context_lengths", "600", "--depth_percents", "20", "80", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, default_model):
    out = tmp_path_factory.mktemp("head_score")
    code = cli_detect.cli(GRID + ["--output_dir", str(out), "--save_prompts"])
    assert code == 0
    return out


def test_outputs_in_the_original_format(run_dir):
    path = run_dir / "SmolLM2-135M-Instruct.json"
    text = path.read_text()
    assert text.count("\n") == 1  # one line of JSON
    # the original README's snippet
    with open(path) as f:
        head_list = json.loads(f.readline())
    ranked = sorted([(k, np.mean(v)) for k, v in head_list.items()], key=lambda x: x[1], reverse=True)
    assert list(head_list) == [f"{l}-{h}" for l in range(30) for h in range(9)]
    trials = [json.loads(x) for x in (run_dir / "SmolLM2-135M-Instruct.trials.jsonl").read_text().splitlines()]
    assert len(trials) == 6
    passed = [t for t in trials if t["passed"]]
    assert len(passed) >= 4 and all(len(v) == len(passed) for v in head_list.values())
    # real retrieval heads stand out: a few heads well above the rest
    assert ranked[0][1] > 0.5 and sum(1 for _, m in ranked if m > 0.1) < 30
    for t in trials:
        for k in ("needle_id", "context_length", "depth_percent", "prompt_length", "needle_span", "response",
                  "response_ids", "rouge1_recall", "passed", "head_scores", "prompt_ids"):
            assert k in t
        assert t["prompt_length"] == t["context_length"] == len(t["prompt_ids"])
    manifest = json.loads((run_dir / "SmolLM2-135M-Instruct.manifest.json").read_text())
    for k in ("config", "model", "seed", "versions", "git_commit", "started_utc"):
        assert k in manifest
    assert manifest["model"]["attn_implementation"] == "sdpa"


def test_saved_prompts_rescore_identically_with_eager(run_dir, default_model):
    model, _, _ = default_model
    trials = [json.loads(x) for x in (run_dir / "SmolLM2-135M-Instruct.trials.jsonl").read_text().splitlines()]
    for t in trials:
        assert eager_rescore(model, t) == t["head_scores"]


def test_existing_output_is_refused_without_overwrite(run_dir, capsys):
    before = (run_dir / "SmolLM2-135M-Instruct.json").read_bytes()
    assert cli_detect.cli(GRID + ["--output_dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "--resume" in err[0]
    assert (run_dir / "SmolLM2-135M-Instruct.json").read_bytes() == before


def test_zero_passing_trials_is_an_error(tmp_path, default_model, capsys):
    code = cli_detect.cli(["--context_lengths", "300", "--depth_percents", "50", "--quiet",
                           "--rouge_threshold", "100", "--output_dir", str(tmp_path)])
    assert code == 2
    assert "no trial passed" in capsys.readouterr().err
    assert not (tmp_path / "SmolLM2-135M-Instruct.json").exists()
