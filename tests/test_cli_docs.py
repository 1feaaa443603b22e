"""docs/cli.md's reference part is what ``scripts/cli_docs.py`` generates from the parsers
(so a renamed flag, a changed default or a new command fails here until the page is
regenerated), ``--check`` says so by its exit status, and generating imports no torch."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cli_docs.py"


def load():
    spec = importlib.util.spec_from_file_location("cli_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_equals_the_generated_text():
    docs = load()
    current = docs.PAGE.read_text(encoding="utf-8")
    assert current == docs.page(current), "docs/cli.md is stale: run python scripts/cli_docs.py"


def test_every_command_and_visible_flag_is_in_its_section():
    """The generator itself: no command, subcommand or visible flag left out, no hidden one shown."""
    docs = load()
    text = docs.generate()
    sections = {}
    for name, parser, _ in docs.commands():
        level = "####" if " " in name else "###"
        head = f"{level} `retrieval-head {name}`\n"
        assert head in text, name
        body = text.split(head, 1)[1].split("\n###", 1)[0]
        sections[name] = body
        for action in docs.visible(parser):
            for flag in action.option_strings:
                assert f"| `{flag}`" in body or f", `{flag}`" in body, (name, flag)
        for old, new, _ in docs.hidden(parser):
            assert f"| `{old}`" not in body and f"`{old.replace('|', chr(92) + '|')}` → `{new}`" in body, (name, old)
    assert {"generate", "heads top", "heads export"} <= set(sections)
    for term in docs.TERMS.values():
        assert f"| `{term.flag}` |" in text.split("## Options")[0], term.name


def test_check_exit_status(tmp_path, monkeypatch):
    docs = load()
    stale = tmp_path / "cli.md"
    stale.write_text(docs.PAGE.read_text(encoding="utf-8").replace("| `--sink` |", "| `--sinks` |", 1))
    monkeypatch.setattr(docs, "PAGE", stale)
    assert docs.main(["--check"]) == 1
    assert docs.main([]) == 0 and docs.main(["--check"]) == 0  # rewritten below the marker
    assert stale.read_text() == (ROOT / "docs" / "cli.md").read_text()


def test_generating_imports_no_torch():
    probe = ("import runpy, sys\n"
             f"sys.argv = [{str(SCRIPT)!r}, '--check']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.split() == ["0", "False", "False"], done.stderr[-2000:]


def test_defaults_are_the_parsers():
    """One spot check by hand, against the parser itself: mask's --mask_top and judge's."""
    from retrieval_head.cli.parsers import build

    docs = load()
    mask = build("mask", "x").parse_args([])
    judge = build("judge", "x").parse_args([])
    row = next(r for r in docs.generate().splitlines() if r.startswith("| heads masked |"))
    shown = lambda v: "none" if v is None else " ".join(map(str, v))  # noqa: E731 (judge: none, its Ks without --press)
    assert f"`{shown(mask.mask_top)}` (mask)" in row
    assert f"`{shown(judge.mask_top)}` (judge)" in row
    assert argparse.SUPPRESS not in docs.generate()
