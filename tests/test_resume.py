"""Crash safety: a real `kill -9` mid-sweep, then --resume, gives byte-identical head scores."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A small decode-batch budget: trials still decode in batches (the default path), but in
# several small ones, so records keep arriving through the sweep and a kill lands mid-way
# (with the default budget all 18 would arrive in two bursts at the very end).
ARGS = ["--context_lengths", "300", "400", "--depth_percents", "10", "50", "90", "--quiet", "--batch_tokens", "900"]
NAME = "SmolLM2-135M-Instruct"


def _run(out, *extra, wait=True):
    cmd = [sys.executable, str(ROOT / "retrieval_head_detection.py"), *ARGS, "--output_dir", str(out), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)


def _interruptible():
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child Ctrl-C as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _strip_timing(line):
    rec = json.loads(line)
    rec.pop("duration_s", None)
    return rec


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(tmp_path, default_model):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run(full).returncode == 0
    proc = _run(killed, wait=False)
    log = killed / f"{NAME}.trials.jsonl"
    deadline = time.time() + 300
    while len(_lines(log)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(log, "a") as f:  # a torn last line, as a kill in mid-write leaves
        f.write('{"needle_id": 0, "context_le')
    refused = _run(killed)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _run(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / f"{NAME}.json").read_bytes() == (full / f"{NAME}.json").read_bytes()
    a = sorted(map(json.dumps, map(_strip_timing, _lines(full / f"{NAME}.trials.jsonl"))))
    b = sorted(map(json.dumps, map(_strip_timing, _lines(log))))
    assert a == b


def test_resume_refuses_other_settings(tmp_path, default_model):
    assert _run(tmp_path, "--depth_percents", "50", "--context_lengths", "300").returncode == 0
    r = _run(tmp_path, "--resume", "--max_new_tokens", "20")
    assert r.returncode == 2 and "different settings" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


NIAH_ARGS = ["--context_lengths", "300", "400", "--depth_percents", "10", "50", "90", "--quiet", "--no_plot",
             "--mask_top", "0", "5", "-5", "--batch_tokens", "2000"]  # small batches, as ARGS
TIMING = ("test_duration_seconds", "test_timestamp_utc")


def _niah(out, head_score, *extra, wait=True):
    cmd = [sys.executable, str(ROOT / "needle_in_haystack_with_mask.py"), *NIAH_ARGS, "--head_score",
           str(head_score), "--output_dir", str(out), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _results(root):
    out = {}
    for f in sorted(root.rglob(f"{NAME}_len_*.json")):
        rec = json.loads(f.read_text())
        out[str(f.relative_to(root))] = {k: v for k, v in rec.items() if k not in TIMING}
    return out


@pytest.mark.slow
def test_niah_kill_9_then_resume_matches_uninterrupted(tmp_path, default_model):
    scores = tmp_path / "scores.json"  # any head scores of the right shape will do
    scores.write_text(json.dumps({f"{l}-{h}": [((l * 9 + h) % 17) / 17] for l in range(30) for h in range(9)}) + "\n")
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _niah(full, scores).returncode == 0
    proc = _niah(killed, scores, wait=False)
    deadline = time.time() + 300
    while len(list(killed.rglob(f"{NAME}_len_*.json"))) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_results(killed)) < len(_results(full))
    refused = _niah(killed, scores)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _niah(killed, scores, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _results(killed) == _results(full) and len(_results(full)) == 18


def test_ctrl_c_keeps_trials_and_says_how_to_resume(tmp_path, default_model):
    proc = _run(tmp_path, wait=False)
    log = tmp_path / f"{NAME}.trials.jsonl"
    deadline = time.time() + 300
    while len(_lines(log)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert "--resume" in proc.stderr.read()
    assert len(_lines(log)) >= 1
    assert all(json.loads(line) for line in _lines(log))  # no torn line
