"""Sweep sharding: two processes (torchrun, and --rank/--world_size by hand) give exactly the
single-process head scores; shards made with other settings are refused at the merge."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_inputs

pytestmark = pytest.mark.full  # torchrun and sharded runs in subprocesses (~300 s in all): `make test` only

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    return make_inputs(tmp_path_factory.mktemp("shard"), default_tokenizer)


def args(p, out, *extra):
    # a random model never answers right: threshold -1 counts every trial, so scores are compared
    return ["--model_path", str(p["tiny"]), "--needles", str(p["needles_ok"]), "--context_lengths", "150", "200",
            "300", "--depth_percents", "0", "50", "100", "--max_new_tokens", "8", "--rouge_threshold", "-1",
            "--quiet", "--threads", "1", "--output_dir", str(out), *extra]


def run(argv, launcher=()):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *launcher, str(ROOT / "retrieval_head_detection.py"), *argv],
                          env=env, capture_output=True, text=True, timeout=600)


def trials(path):
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for r in recs:
        r.pop("duration_s")
    return recs


def test_torchrun_two_ranks_match_one_process(tiny, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(args(tiny, one)).returncode == 0
    r = run(args(tiny, two), launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (two / "tiny.json").read_bytes() == (one / "tiny.json").read_bytes()
    assert trials(two / "tiny.trials.jsonl") == trials(one / "tiny.trials.jsonl")
    shard_logs = [trials(two / f"tiny.shard{k}-of-2.trials.jsonl") for k in (0, 1)]
    assert all(shard_logs) and sum(map(len, shard_logs)) == 9


def test_ranks_by_hand_and_a_refused_merge(tiny, tmp_path):
    one, two, bad = tmp_path / "one", tmp_path / "two", tmp_path / "bad"
    assert run(args(tiny, one)).returncode == 0
    first = run(args(tiny, two, "--rank", "1", "--world_size", "2"))
    assert first.returncode == 0 and "shard 1 of 2 finished" in first.stdout
    assert not (two / "tiny.json").exists()
    assert run(args(tiny, two, "--rank", "0", "--world_size", "2")).returncode == 0
    assert (two / "tiny.json").read_bytes() == (one / "tiny.json").read_bytes()
    assert run(args(tiny, bad, "--rank", "0", "--world_size", "2")).returncode == 0
    r = run(args(tiny, bad, "--rank", "1", "--world_size", "2", "--max_new_tokens", "5"))
    assert r.returncode == 2 and "different settings" in r.stderr
    assert not (bad / "tiny.json").exists()


def test_niah_two_shards_match_one_process(tiny, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"

    def niah(out, *extra):
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, str(ROOT / "needle_in_haystack_with_mask.py"), "--model_path",
                               str(tiny["tiny"]), "--needles", str(tiny["needles_ok"]), "--context_lengths", "150",
                               "200", "300", "--depth_percents", "0", "50", "--max_new_tokens", "6", "--mask_top", "0",
                               "2", "-2", "--head_score", str(tiny["hs_tiny"]), "--quiet", "--no_plot",
                               "--output_dir", str(out), *extra], env=env, capture_output=True, text=True, timeout=600)

    assert niah(one).returncode == 0
    first = niah(two, "--rank", "0", "--world_size", "2")
    assert first.returncode == 0 and "shard 0 of 2 finished" in first.stdout
    assert niah(two, "--rank", "1", "--world_size", "2").returncode == 0

    def results(root):
        return {str(f.relative_to(root)): {k: v for k, v in json.loads(f.read_text()).items()
                                           if k not in ("test_duration_seconds", "test_timestamp_utc")}
                for f in root.rglob("tiny_len_*.json")}

    assert results(two) == results(one) and len(results(one)) == 18
    assert all((two / d.name / "manifest.json").exists() for d in one.iterdir())

