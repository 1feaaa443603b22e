"""A start under a second: ``--help`` of every command and ``heads top`` on a head-score JSON
import neither torch nor transformers (checked in ``sys.modules`` of a fresh interpreter,
not with a clock; the times are in docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from retrieval_head.cli.commands import COMMANDS

PROBE = """
import sys
from retrieval_head.cli.commands import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "transformers", "matplotlib") if m in sys.modules)
print("LOADED", ",".join(heavy), "CODE", code, file=sys.stderr)
"""


def loaded(*argv: str, cwd=None) -> tuple[str, str]:
    """(the heavy packages a fresh interpreter loaded running ``retrieval-head ARGV``, its stdout)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    line = next(l for l in done.stderr.splitlines() if l.startswith("LOADED"))
    assert line.endswith("CODE 0"), done.stderr
    return line.split()[1] if len(line.split()) == 4 else "", done.stdout


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS),
                                  *(["heads", s, "--help"] for s in ("top", "heatmap", "compare", "export",
                                                                     "stability", "convergence"))],
                         ids=lambda a: " ".join(a))
def test_help_imports_no_torch(argv):
    heavy, out = loaded(*argv)
    assert heavy == "" and "usage:" in out


def test_heads_top_on_a_json_file_imports_no_torch(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"0-0": [0.5, 1.0], "0-1": [0.25, 0.25], "1-0": [0.0, 0.0], "1-1": [1.0, 1.0]}))
    heavy, out = loaded("heads", "top", str(f), "--top", "2")
    assert heavy == ""
    assert [l.split() for l in out.splitlines()[1:]] == [["1", "1-1", "1.000"], ["2", "0-0", "0.750"]]


def test_heads_top_says_a_kv_max_file_is_per_kv_head(tmp_path):
    f = tmp_path / "m.kv_max.json"
    f.write_text(json.dumps({"0-0": [0.5], "0-1": [1.0]}))
    heavy, out = loaded("heads", "top", "--head_score", str(f))
    assert heavy == "" and out.splitlines()[0].startswith("per KV head") and "0-1" in out.splitlines()[2]
