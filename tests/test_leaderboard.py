"""``retrieval-head leaderboard`` end to end on a tiny model: every file written (the condition
folders, the table, a figure per task, the manifest), each table cell the records' own numbers
(mean, bootstrap interval, bytes share), a killed run resumed to the uninterrupted run's records
and table, and its bad inputs refused before the weights load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import save_tiny_llama

from retrieval_head.cli import commands
from retrieval_head.cli.common import PAUSE_ENV
from retrieval_head.experiments.leaderboard import cell, fmt

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--task", "single", "multikey", "--context_lengths", "300", "--depth_percents", "20", "80", "--press",
        "full", "snapkv", "knorm", "duo@random", "--budget", "0.5", "0.25", "--max_new_tokens", "8", "--quiet"]
PRESSES = {"snapkv": "snapkv", "knorm": "knorm", "duo@random": "duo-random"}
TIMING = ("test_duration_seconds", "test_timestamp_utc")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("board") / "tiny", default_tokenizer)


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("tiny_len_*.json"))]


def test_the_leaderboard_writes_its_files_and_its_cells_are_the_records(tiny, tmp_path, capsys):
    out = tmp_path / "board"
    assert commands.main(["leaderboard", "--model_path", str(tiny), *ARGS, "--output_dir", str(out)]) == 0
    capsys.readouterr()
    table = (out / "tiny.leaderboard.md").read_text()
    assert (out / "tiny.leaderboard_single.png").stat().st_size > 0
    assert (out / "tiny.leaderboard_multikey.png").stat().st_size > 0
    manifest = json.loads((out / "tiny.leaderboard.manifest.json").read_text())
    assert manifest["command"] == "leaderboard" and manifest["status"] == "finished"
    sections = dict(zip(["single", "multikey"], table.split("\n## ")[1:]))
    for task, field in (("single", "score"), ("multikey", "string_match")):
        tag = "" if task == "single" else f"_{task}"
        body = sections[task]
        full = records(out / f"tiny{tag}")
        assert len(full) == 2 and f"full cache: {fmt(cell(full, field, 1000, 0))}" in body
        for label, name in PRESSES.items():
            row = next(line for line in body.splitlines() if line.startswith(f"| {label} |"))
            cells = [fmt(cell(records(out / f"tiny_press_{name}_b{b}{tag}"), field, 1000, 0)) for b in ("0.5", "0.25")]
            assert row == f"| {label} | {cells[0]} | {cells[1]} |"
        share = [r["mask"]["kv_kept"] for r in records(out / f"tiny_press_knorm_b0.25{tag}")]
        assert share == [0.25, 0.25] and "· 25.0% |" in body
    again = commands.main(["leaderboard", "--model_path", str(tiny), *ARGS, "--output_dir", str(out)])
    assert again == 2 and "--resume" in capsys.readouterr().err  # an existing leaderboard is not overwritten


def _run(out: Path, tiny: Path, *extra: str, pause_after: int | None = None):
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "retrieval_head", "leaderboard", "--model_path", str(tiny), *ARGS,
           "--output_dir", str(out), *extra]
    if pause_after is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    proc = subprocess.Popen(cmd, env=dict(env, **{PAUSE_ENV: str(pause_after)}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns when it stops itself (or ends)
    assert os.WIFSTOPPED(status), "the leaderboard ended before its pause point"
    return proc


def _results(root: Path) -> dict:
    return {str(p.relative_to(root)): {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}
            for p in sorted(root.rglob("tiny_len_*.json"))}


@pytest.mark.full  # three runs in subprocesses
def test_a_killed_leaderboard_resumes_to_the_same_records_and_table(tiny, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run(full, tiny).returncode == 0
    proc = _run(killed, tiny, pause_after=9)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_results(killed)) == 9 and not (killed / "tiny.leaderboard.md").exists()
    refused = _run(killed, tiny)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _run(killed, tiny, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _results(killed) == _results(full) and len(_results(full)) == 2 * 2 * 7
    assert (killed / "tiny.leaderboard.md").read_text() == (full / "tiny.leaderboard.md").read_text()


def test_a_cell_is_the_mean_its_bootstrap_interval_and_the_bytes_share():
    """Records of varied scores (the tiny model's answers score 0): the cell's numbers by hand."""
    from retrieval_head.analysis.stability import mean_interval
    from retrieval_head.experiments.leaderboard import board, points
    from retrieval_head.experiments.mask import Condition

    recs = [{"score": s, "string_match": m, "task": "vt", "mask": {"kv_kept": k}}
            for s, m, k in ((100.0, 100.0, 0.24), (0.0, 50.0, 0.26), (50.0, 0.0, 0.25), (50.0, 100.0, 0.25))]
    mean, lo, hi, share = cell(recs, "string_match", 500, 3)
    assert (mean, share) == (62.5, 0.25) and (mean, lo, hi) == mean_interval([100.0, 50.0, 0.0, 100.0], 500, 3)
    assert 0.0 <= lo < mean < hi <= 100.0
    full = Condition("none", 0, None, folder="M")

    class Press:  # the few fields points reads of a press condition
        def __init__(self, budget):
            self.mask = type("M", (), {"budget": budget})()
            self.folder = f"P{budget}"

    p = points([("full", [full]), ("snapkv", [Press(0.25), Press(0.1)])],
               {"M": recs, "P0.25": recs, "P0.1": recs[:2]}, 500, 3)
    assert p["metric"].field == "string_match" and p["task"] == "vt"
    assert p["presses"]["snapkv"] == [(0.25, cell(recs, "string_match", 500, 3)),
                                      (0.1, cell(recs[:2], "string_match", 500, 3))]
    text = board("M", (0.5, 0.25, 0.1), [("vt", p)], 4, 500, 3)
    assert f"| snapkv | — | {fmt(p['presses']['snapkv'][0][1])} | {fmt(p['presses']['snapkv'][1][1])} |" in text
    assert "62.5 [" in text and "· 25.0% |" in text and "## vt (string match x100)" in text


def test_the_leaderboard_in_phase_context(tiny, tmp_path, capsys):
    out = tmp_path / "board"
    args = ["--task", "single", "--context_lengths", "300", "--depth_percents", "50", "--press", "knorm",
            "--budget", "0.25", "--max_new_tokens", "4", "--quiet", "--phase", "context"]
    assert commands.main(["leaderboard", "--model_path", str(tiny), *args, "--output_dir", str(out)]) == 0
    (r,) = records(out / "tiny_press_knorm_b0.25_context")
    assert r["mask"]["phase"] == "context" and r["mask"]["kv_kept"] > 0.25  # the question kept whole
    assert f"| knorm | {fmt(cell([r], 'score', 1000, 0))} |" in (out / "tiny.leaderboard.md").read_text()
