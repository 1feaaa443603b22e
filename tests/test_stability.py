"""The trial bootstrap and the convergence replay, on files with known answers."""

import json
import math
from pathlib import Path

import pytest
import torch

from retrieval_head.analysis.convergence import by_length, convergence, needed, summary
from retrieval_head.analysis.stability import bootstrap, load_trials
from retrieval_head.cli.heads import main as heads_main
from retrieval_head.errors import UserError
from retrieval_head.experiments.sweep import TrialKey
from retrieval_head.headfiles.original import write_head_scores

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "head_score"


def _file(tmp_path, columns: dict[str, list[float]], name="m.json") -> Path:
    write_head_scores(tmp_path / name, columns)
    return tmp_path / name


def test_a_head_scoring_one_in_every_trial(tmp_path):
    n = 40
    path = _file(tmp_path, {"0-0": [0.0] * n, "0-1": [1.0] * n, "1-0": [0.0] * n, "1-1": [0.0] * n})
    t = load_trials(path)
    assert t.scores.shape == (n, 2, 2) and t.keys is None
    s = bootstrap(t.scores, k=1, draws=500)
    assert (s.lo[0, 1].item(), s.hi[0, 1].item(), s.p_top[0, 1].item()) == (1.0, 1.0, 1.0)
    assert s.p_top.sum().item() == 1.0 and s.hi[1].tolist() == [0.0, 0.0]
    assert s.stable_top == s.top == [(0, 1)] and s.stable and (s.set_equal, s.jaccard) == (1.0, 1.0)


def test_two_heads_tied_in_every_trial_share_the_top_at_random(tmp_path):
    g = torch.Generator().manual_seed(3)
    tied = torch.rand(30, generator=g).tolist()
    path = _file(tmp_path, {"0-0": [x / 4 for x in tied], "0-1": tied, "0-2": tied, "0-3": [x / 2 for x in tied]})
    draws = 4000
    s = bootstrap(load_trials(path).scores, k=1, draws=draws)
    tol = 4 * math.sqrt(0.25 / draws)  # 4 binomial standard deviations of a fair coin over the draws
    assert abs(s.p_top[0, 1].item() - 0.5) < tol and abs(s.p_top[0, 2].item() - 0.5) < tol
    assert s.p_top[0, 1].item() + s.p_top[0, 2].item() == 1.0
    assert s.lo[0, 1].item() == s.lo[0, 2].item() and s.hi[0, 1].item() == s.hi[0, 2].item()
    assert s.top == [(0, 1)] and s.stable_top == [] and not s.stable   # the mean's own ranking: layer-major


def test_stratified_resampling_keeps_each_strata_share():
    # head 0 scores 1 on every length-100 trial, 0 on every length-200 one: resampled within
    # lengths its mean is 0.5 in every draw; resampled freely it spreads
    x = torch.zeros(20, 1, 2, dtype=torch.float64)
    x[:10, 0, 0] = 1.0
    strata = [100] * 10 + [200] * 10
    s = bootstrap(x, k=1, draws=300, strata=strata)
    assert (s.lo[0, 0].item(), s.hi[0, 0].item()) == (0.5, 0.5)
    free = bootstrap(x, k=1, draws=300)
    assert free.lo[0, 0].item() < 0.5 < free.hi[0, 0].item()


def test_same_seed_same_bytes_and_the_json_shape(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    path = _file(tmp_path, {f"{l}-{h}": torch.rand(25, generator=g).tolist() for l in range(3) for h in range(4)})
    outs = []
    for seed in (7, 7, 8):
        assert heads_main(["stability", str(path), "--top", "3", "--draws", "200", "--seed", str(seed), "--json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]
    d = json.loads(outs[0])
    assert len(d["heads"]) == 12 and set(d["heads"]["2-3"]) == {"mean", "lo", "hi", "p_top"}
    assert d["trials"] == 25 and d["k"] == 3 and len(d["top"]) == 3 and set(d["stable_top"]) <= set(d["top"])
    assert sum(h["p_top"] for h in d["heads"].values()) == pytest.approx(3.0)
    assert heads_main(["stability", str(path), "--top", "3", "--draws", "50"]) == 0
    assert "stable top-3" in capsys.readouterr().out


def _trial_log(tmp_path) -> Path:
    """Two lengths; head 0-0 wins at 500 tokens, head 0-1 at 1000 (and overall)."""
    lines = []
    for L, scores in ((500, [[0.9, 0.1, 0.0]]), (1000, [[0.0, 1.0, 0.2]])):
        for d in (0, 50, 100):
            lines.append(dict(needle_id=0, context_length=L, depth_percent=d, passed=True, head_scores=scores))
    lines.append(dict(needle_id=0, context_length=1000, depth_percent=25, passed=False, head_scores=[[9, 9, 9]]))
    path = tmp_path / "m.trials.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_trial_logs_count_passed_trials_and_stratify(tmp_path, capsys):
    t = load_trials(_trial_log(tmp_path))
    assert t.scores.shape == (6, 1, 3) and t.keys[0] == TrialKey(0, 500, 0)   # the failed trial is not counted
    assert t.strata("length") == [500] * 3 + [1000] * 3
    s = bootstrap(t.scores, k=1, draws=200, strata=t.strata("length"))
    assert s.top == [(0, 1)] and s.p_top[0, 1].item() == 1.0     # 0.55 vs 0.45 in every stratified draw
    assert by_length(t, k=1, draws=100) == {500: (0.0, 0.0, 0.0), 1000: (1.0, 1.0, 1.0)}
    with pytest.raises(UserError, match="needs a trial log"):
        load_trials(_file(tmp_path, {"0-0": [1.0]})).strata("depth")
    out = tmp_path / "c.png"
    assert heads_main(["convergence", str(tmp_path / "m.trials.jsonl"), "--top", "1", "--seeds", "3",
                       "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convergence_counts_the_trials_until_the_top_stays():
    x = torch.zeros(5, 1, 2, dtype=torch.float64)
    x[:, 0, 1] = 1.0   # head 0-1 wins every trial: one trial is enough in every order
    c = convergence(x, k=1, seeds=4)
    assert c.final == [(0, 1)] and needed(c.overlap == 1.0).tolist() == [1, 1, 1, 1]
    assert needed(torch.tensor([[True, False, True, True], [False] * 4])).tolist() == [3, 5]


def test_bad_inputs_are_one_line_errors(tmp_path):
    path = _file(tmp_path, {"0-0": [1.0], "0-1": [0.0]})
    with pytest.raises(UserError, match="--top must be in 1..2"):
        bootstrap(load_trials(path).scores, k=3)
    with pytest.raises(UserError, match="no counted"):
        load_trials(_file(tmp_path, {"0-0": [], "0-1": []}, "empty.json"))


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the published head scores (../shared/reference) are absent")
def test_published_file_bootstraps_as_the_table_says():
    r = summary(REFERENCE / "Qwen1.5-14B-Chat.json", seeds=3, draws=200)
    assert r["trials"] == 221 and set(r["stable_top"]) <= set(r["top"]) and len(r["top"]) == 10
    assert set(r["stable_small"]) <= set(r["top"][:5])
    # the stable top 5 sits in the final top 10: it is inside a prefix's top 10 no later than the whole set is
    assert 1 <= r["stable_in_top"][0] <= r["stable_top_in_top"][0] <= r["top_equal"][0] <= r["top_equal"][1] <= 221
