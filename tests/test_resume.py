"""Crash safety: a real `kill -9` mid-sweep, then --resume, gives byte-identical head scores.

No race: the child runs with the test-only hook ``RETRIEVAL_HEAD_TEST_PAUSE_AFTER=N``
(``cli_common.pause_for_tests``), which stops it (SIGSTOP) right after its N-th result is
written; the test waits for that stop, then kills or interrupts it at that known point."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval_head.cli.common import PAUSE_ENV

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--context_lengths", "300", "400", "--depth_percents", "10", "50", "90", "--quiet"]  # the default levers
NAME = "SmolLM2-135M-Instruct"


def _start(script, args, pause_after):
    """The command, stopped by itself right after its ``pause_after``-th result is written."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", **{PAUSE_ENV: str(pause_after)})
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns when it stops (or ends)
    assert os.WIFSTOPPED(status), "the command ended before its pause point"
    return proc


def _run(out, *extra, pause_after=None):
    args = [*ARGS, "--output_dir", str(out), *extra]
    if pause_after is not None:
        return _start("retrieval_head_detection.py", args, pause_after)
    cmd = [sys.executable, str(ROOT / "retrieval_head_detection.py"), *args]
    return subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600)


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
    proc = _run(killed, pause_after=3)
    log = killed / f"{NAME}.trials.jsonl"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_lines(log)) == 3
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


@pytest.mark.full  # two runs of the script in subprocesses (~80 s): `make test` only
def test_resume_refuses_other_settings(tmp_path, default_model):
    assert _run(tmp_path, "--depth_percents", "50", "--context_lengths", "300").returncode == 0
    r = _run(tmp_path, "--resume", "--max_new_tokens", "20")
    assert r.returncode == 2 and "different settings" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


NIAH_ARGS = ["--context_lengths", "300", "400", "--depth_percents", "10", "50", "90", "--quiet", "--no_plot",
             "--mask_top", "0", "5", "-5"]
TIMING = ("test_duration_seconds", "test_timestamp_utc")


def _niah(out, head_score, *extra, pause_after=None):
    args = [*NIAH_ARGS, "--head_score", str(head_score), "--output_dir", str(out), *extra]
    if pause_after is not None:
        return _start("needle_in_haystack_with_mask.py", args, pause_after)
    cmd = [sys.executable, str(ROOT / "needle_in_haystack_with_mask.py"), *args]
    return subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600)


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
    proc = _niah(killed, scores, pause_after=4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_results(killed)) == 4
    refused = _niah(killed, scores)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _niah(killed, scores, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _results(killed) == _results(full) and len(_results(full)) == 18


@pytest.mark.full  # runs, interrupts and resumes the script (~85 s): `make test` only
def test_ctrl_c_keeps_trials_and_says_how_to_resume(tmp_path, default_model):
    proc = _run(tmp_path, pause_after=2)
    log = tmp_path / f"{NAME}.trials.jsonl"
    proc.send_signal(signal.SIGINT)  # pending while stopped; delivered on SIGCONT, as a Ctrl-C mid-sweep
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=120) == 130
    assert "--resume" in proc.stderr.read()
    assert len(_lines(log)) == 2
    assert all(json.loads(line) for line in _lines(log))  # no torn line
