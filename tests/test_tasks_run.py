"""Tasks in the commands: the masked test runs several tasks in one process (single's files as
before), detection on a task counts copies from distractors separately, per head."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_inputs

from retrieval_head.core.scoring import spans_scores, trial_scores
from retrieval_head.inputs.haystack import default_haystack_dir, read_haystack
from retrieval_head.inputs.prompt import PromptBuilder
from retrieval_head.inputs.tasks import build_task_prompt, make_trial, string_match

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("test_duration_seconds", "test_timestamp_utc")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    return make_inputs(tmp_path_factory.mktemp("tasks"), default_tokenizer)


def run(script, p, out, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    argv = ["--model_path", str(p["tiny"]), "--needles", str(p["needles_ok"]), "--context_lengths", "300", "400",
            "--depth_percents", "0", "50", "--max_new_tokens", "6", "--quiet", "--output_dir", str(out), *extra]
    return subprocess.run([sys.executable, str(ROOT / script), *argv], env=env, capture_output=True, text=True,
                          timeout=600)


def records(folder: Path) -> dict:
    return {f.name: {k: v for k, v in json.loads(f.read_text()).items() if k not in VOLATILE}
            for f in sorted(folder.glob("tiny_len_*.json"))}


@pytest.mark.full  # the masked script over three tasks end to end (~27 s): `make test` only
def test_mask_runs_tasks_side_by_side_and_single_as_before(tiny, tmp_path):
    mask = ["--mask_top", "0", "2", "--head_score", str(tiny["hs_tiny"]), "--no_plot"]
    both, alone = tmp_path / "both", tmp_path / "alone"
    r = run("needle_in_haystack_with_mask.py", tiny, both, *mask, "--task", "single", "multikey", "vt")
    assert r.returncode == 0, r.stderr
    assert run("needle_in_haystack_with_mask.py", tiny, alone, *mask).returncode == 0
    assert sorted(d.name for d in both.iterdir()) == ["tiny", "tiny_block_top2", "tiny_block_top2_multikey",
                                                      "tiny_block_top2_vt", "tiny_multikey", "tiny_vt"]
    for folder in ("tiny", "tiny_block_top2"):  # single: the same records, no task field anywhere
        assert records(both / folder) == records(alone / folder) and len(records(alone / folder)) == 4
        assert "task" not in json.loads((alone / folder / "manifest.json").read_text())["config"]
    for task in ("multikey", "vt"):
        recs = records(both / f"tiny_{task}")
        assert len(recs) == 4
        for rec in recs.values():
            assert rec["task"] == task and rec["answers"] == [i["value"] for i in rec["inserts"] if i["asked"]]
            assert rec["needle_span"] == next(i["span"] for i in rec["inserts"] if i["asked"])
            assert rec["string_match"] == 100 * string_match(rec["model_response"], rec["answers"])
            assert rec["distractors_answered"] == [i["value"] for i in rec["inserts"] if not i["asked"]
                                                   and i["value"].lower() in rec["model_response"].lower()]
            assert rec["stop"] == ("eos" if task == "vt" else "eos or newline")
            assert rec["max_new_tokens"] == (120 if task == "vt" else 6)
        m = json.loads((both / f"tiny_{task}" / "manifest.json").read_text())
        assert m["config"]["task"] == task and m["fingerprint"]["task"] == task
    table = r.stdout.split("per task and condition")[1]
    assert [line.split()[0] for line in table.strip().splitlines()[1:7]] == ["single"] * 2 + ["multikey"] * 2 + \
        ["vt"] * 2


@pytest.mark.full  # the detection script on a task end to end (~19 s): `make test` only
def test_detect_on_a_task_writes_distractor_counts(tiny, tmp_path):
    r = run("retrieval_head_detection.py", tiny, tmp_path, "--task", "multikey", "--rouge_threshold", "-1",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    trials = [json.loads(x) for x in (tmp_path / "tiny_multikey.trials.jsonl").read_text().splitlines()]
    assert len(trials) == 4 and all(len(t["distractor_scores"]) == 2 and len(t["distractor_scores"][0]) == 4
                                    for t in trials)
    assert all(t["asked"] == [True, False, False, False] and t["value_spans"][0] == t["needle_span"] for t in trials)
    assert all(t["max_new_tokens"] == 6 and t["stop"] == "eos or newline" for t in trials)
    dis = json.loads((tmp_path / "tiny_multikey.distractor.json").read_text())
    assert sorted(dis) == [f"{l}-{h}" for l in range(2) for h in range(4)] and all(len(v) == 4 for v in dis.values())
    assert (tmp_path / "tiny_multikey.json").exists() and not (tmp_path / "tiny.json").exists()
    bad = run("retrieval_head_detection.py", tiny, tmp_path / "two", "--task", "multikey", "vt")
    assert bad.returncode == 2 and "one task at a time" in bad.stderr


def test_an_answer_copying_a_distractor_counts_for_the_distractor_only(default_tokenizer):
    builder = PromptBuilder(default_tokenizer, read_haystack(default_haystack_dir()), chat_template=True)
    trial = make_trial("multikey", 0, 600, 50)
    p = build_task_prompt(builder, trial, 600)
    s, e = p.distractor_spans()[1]
    answer = p.ids[s:e]  # the model answers with the second distractor's value, token for token
    steps = len(answer)
    pos = torch.zeros(steps, 2, 2, dtype=torch.long)  # [steps, layers, heads]
    pos[:, 0, 0] = torch.arange(s, e)  # head 0-0 reads the distractor it copies
    pos[:, 0, 1] = torch.arange(p.needle_span[0], p.needle_span[0] + steps)  # 0-1 reads the asked value
    pos[:, 1, 0] = torch.arange(s, e)  # 1-0 too, but only on the first step
    pos[1:, 1, 0] = 0
    dis = spans_scores(p.ids, p.distractor_spans(), pos, answer)
    assert dis.tolist() == [[1.0, 0.0], [1 / (e - s), 0.0]]
    asked = trial_scores(p.ids, p.needle_span, pos, answer)
    copied = sum(a == b for a, b in zip(answer, p.ids[p.needle_span[0]:p.needle_span[1]]))
    assert asked[0, 0] == 0 and asked[0, 1] == copied / (p.needle_span[1] - p.needle_span[0])
    assert string_match(default_tokenizer.decode(answer), trial.answers) == 0.0


@pytest.mark.full  # the judge on a task end to end (~12 s): `make test` only
def test_judge_on_a_task_scores_string_match(tiny, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "retrieval_head", "judge", "--model_path", str(tiny["tiny"]),
                        "--needles", str(tiny["needles_ok"]), "--context_lengths", "300", "--depth_percents", "50",
                        "--max_new_tokens", "6", "--head_score", str(tiny["hs_tiny"]), "--mask_top", "1",
                        "--seeds", "0", "--quiet", "--output_dir", str(tmp_path), "--task", "multiquery"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in (tmp_path / "tiny_multiquery.judge.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(x["task"] == "multiquery" and len(x["answers"]) == 4 for x in recs)
    m = json.loads((tmp_path / "tiny_multiquery.judge.manifest.json").read_text())
    assert m["config"]["task"] == ["multiquery"] and m["summary"]["none"] == recs[0]["string_match"]
    assert "task multiquery (string match" in (tmp_path / "tiny_multiquery.judge.md").read_text()


def test_multi_answer_tasks_stop_at_eos_only(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrieval_head.core.decode import stop_token_mask
    from retrieval_head.experiments.sweep import SweepSettings

    model = AutoModelForCausalLM.from_pretrained(tiny["tiny"])
    tok = AutoTokenizer.from_pretrained(tiny["tiny"])
    lines, eos = stop_token_mask(model, tok), stop_token_mask(model, tok, newline=False)
    newline = tok("a\nb", add_special_tokens=False)["input_ids"]
    assert any(lines[i] for i in newline) and not any(eos[i] for i in newline)
    assert eos.nonzero().flatten().tolist() == sorted({tok.eos_token_id} & set(range(len(eos))))
    assert (eos & ~lines).sum() == 0  # EOS-only is a subset of the usual rule
    st = SweepSettings(max_new_tokens=200)
    assert [st.decoding(t) for t in ("single", "multikey", "vt")] == [(200, True), (200, True), (200, False)]
