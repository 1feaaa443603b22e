"""The adaptive sweep (--until_stable): its rounds, its stopping rule, and the run end to end on a
tiny random model (byte-identical reruns, replay from a finished log). Its bad inputs (K = 0, K above
the heads, shards) are cases of test_bad_inputs.py."""

import json
import shutil

import pytest
import torch
from helpers import NEEDLE, one_thread

from retrieval_head.cli.detect import main
from retrieval_head.experiments import adaptive
from retrieval_head.experiments.adaptive import decide, rounds
from retrieval_head.experiments.sweep import TrialKey

NAME = "tiny"


def test_rounds_cover_the_grid_once_coarse_to_fine():
    needles, lengths, depths = [0, 1, 2], [500, 1000, 1500, 2000], [0, 25, 50, 75, 100]
    r = rounds(needles, lengths, depths)
    assert [len(x) for x in r] == [12, 6, 9, 21, 12]
    keys = [k for x in r for k in x]
    assert sorted(keys) == [TrialKey(n, L, d) for n in needles for L in lengths for d in depths]  # each once
    assert {(k.context_length, k.depth_percent) for k in r[0]} == {(500, 0), (500, 100), (2000, 0), (2000, 100)}
    assert all({k.needle_id for k in x} == set(needles) for x in r)  # every needle in every round
    assert rounds([7], [300], [50]) == [[TrialKey(7, 300, 50)]]


def _records(n, winner_scores):
    return [dict(needle_id=0, context_length=100, depth_percent=i, passed=True,
                 head_scores=[[s[i] for s in winner_scores]]) for i in range(n)]


def test_decide_stops_on_a_clear_top_and_not_on_ties():
    clear = decide(_records(10, [[1.0] * 10, [0.0] * 10, [0.5] * 10]) + [dict(_records(1, [[9], [9], [9]])[0],
                                                                          passed=False)], 2, 0.95, 300)
    assert clear == dict(trials=11, counted=10, stable=True, kept=1.0, stable_top=2, set_equal=1.0, min_p_top=1.0)
    for rule in ("kept", "every"):
        tied = decide(_records(10, [[0.0] * 10, [0.3] * 10, [0.3] * 10]), 1, 0.95, 300, rule)
        assert not tied["stable"] and tied["stable_top"] == 0 and 0.4 < tied["kept"] < 0.6
    # top 2 of three heads, the 2nd and 3rd tied: a draw keeps the clear one and half the tie (kept 0.75)
    near = _records(10, [[1.0] * 10, [0.3] * 10, [0.3] * 10])
    assert not decide(near, 2, 0.7, 300, "every")["stable"] and decide(near, 2, 0.7, 300, "kept")["stable"]
    assert decide([], 1, 0.95, 10) == dict(trials=0, counted=0, stable=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, default_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("adaptive")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(default_tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512)).save_pretrained(root / NAME)
    default_tokenizer.save_pretrained(root / NAME)
    needles, hay = root / "needles.jsonl", root / "haystack"
    needles.write_text(json.dumps(NEEDLE) + "\n")
    hay.mkdir()
    text = " ".join(f"The mill near road {i} was quiet that winter." for i in range(300))
    (hay / "essay.txt").write_text(text + "\n")
    return root, ["--model_path", str(root / NAME), "--needles", str(needles), "--haystack_dir", str(hay),
                  "--chat_template", "off", "--max_new_tokens", "4", "--context_lengths", "160", "200", "240",
                  "--depth_percents", "0", "50", "100", "--rouge_threshold", "-1", "--threads", "1", "--quiet"]


@pytest.fixture
def stable_after_six(monkeypatch):
    """The real verdict, but stable once 6 trials have run (a random model's top is never stable)."""
    real = adaptive.decide
    monkeypatch.setattr(adaptive, "decide", lambda records, *a: dict(real(records, *a), stable=len(records) >= 6))


def _run(out, args, *extra):
    with one_thread():
        assert main([*args, "--output_dir", str(out), *extra]) == 0
    return (out / f"{NAME}.json").read_bytes(), json.loads((out / f"{NAME}.manifest.json").read_text())


def _log(out):
    return (out / f"{NAME}.trials.jsonl").read_text().splitlines()


def test_adaptive_stops_reruns_identically_and_replays_a_full_log(inputs, stable_after_six, capsys):
    root, args = inputs
    a, manifest = _run(root / "a", args, "--until_stable", "1")
    stop = manifest["stopping"]
    assert [r["trials"] for r in stop["rounds"]] == [4, 6] and stop["rounds"][-1]["stable"]  # rounds of 4 + 2 cells
    assert (stop["trials_run"], stop["trials_grid"], stop["trials_saved"], stop["k"]) == (6, 9, 3, 1)
    assert "bootstrap" in stop["rule"] and manifest["sweep"]["adaptive"] == stop
    assert len(_log(root / "a")) == 6 and all(len(v) == 6 for v in json.loads(a).values())
    assert "ran 6 of 9 trials, saved 3" in capsys.readouterr().out
    assert _run(root / "b", args, "--until_stable", "1")[0] == a       # same settings, same bytes
    full, _ = _run(root / "full", args)                                # every trial
    assert len(_log(root / "full")) == 9 and full != a
    shutil.copytree(root / "full", root / "replay")
    replay, m = _run(root / "replay", args, "--until_stable", "1", "--resume")
    used = {TrialKey.of(json.loads(x)) for x in _log(root / "a")}
    kept = [x for x in _log(root / "full") if TrialKey.of(json.loads(x)) in used]
    # no trial ran again, and the log holds exactly the trials the scores used (the full log's lines)
    assert replay == a and _log(root / "replay") == kept and len(kept) == 6
    assert m["trials"]["total"] == 6


def test_a_round_with_no_passing_trial_is_logged(caplog):
    from types import SimpleNamespace

    from retrieval_head.experiments.detect import DetectSettings

    trials = SimpleNamespace(needles=[SimpleNamespace(needle_id=0)], lengths=[100, 200], depths=[0, 100])
    failed = lambda keys: [dict(k._asdict(), passed=False, head_scores=[[0.0]]) for k in keys]  # noqa: E731
    with caplog.at_level("WARNING", logger="retrieval_head.experiments.adaptive"):
        records, summary = adaptive.sweep(trials, DetectSettings(until_stable=1, draws=10), failed)
    assert len(records) == 4 and not summary["stopped"] and summary["rounds"][-1]["counted"] == 0
    assert "no trial has passed yet (4 run)" in caplog.text
