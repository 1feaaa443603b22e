"""The documentation: the site builds strictly, the README fits a page, and no command shown
in the README or docs/ is stale.

Every command line in a code block that runs the toolkit (``python retrieval_head_detection.py
...``, ``python needle_in_haystack_with_mask.py ...``, ``retrieval-head ...``,
``python -m retrieval_head...``, also under ``torchrun``) is handed to the real entry point
with argparse stopped right after parsing, so a renamed flag, subcommand or module fails here
and nothing runs (no model loads). ``make X ...`` lines are checked with ``make -n``.

    >>> page = "text\\n```bash\\nmake demo   # the demo\\npython -m retrieval_head.heads top \\\\\\n  f.json\\n```\\n"
    >>> commands_in(page)
    [['make', 'demo'], ['python', '-m', 'retrieval_head.heads', 'top', 'f.json']]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "haystack" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = ("retrieval_head_detection.py", "needle_in_haystack_with_mask.py")
FENCE = re.compile(r"^\s*```")


def code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks (any language but Python) and of indented code blocks."""
    out, fenced, lang, prev_blank = [], False, "", True
    for line in text.splitlines():
        if FENCE.match(line):
            fenced, lang = (not fenced), line.strip()[3:].strip()
            continue
        if fenced:
            if lang not in ("python", "py", "pycon"):
                out.append(line)
        elif line.startswith("    ") and prev_blank and line.strip():
            out.append(line)  # an indented code block (prev_blank stays True through it)
            continue
        prev_blank = not line.strip()
    return out


def commands_in(text: str) -> list[list[str]]:
    """Each command line of the code blocks, continuation lines joined, comments dropped."""
    joined, buf = [], ""
    for line in code_lines(text):
        buf += line.strip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        joined.append(buf)
        buf = ""
    cmds = []
    for line in joined:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (a table, a JSON sample)
            continue
        if words and (is_toolkit(words) or words[0] == "make"):
            cmds.append(words)
    return cmds


def is_toolkit(words: list[str]) -> bool:
    return any(w.endswith(SCRIPTS) or Path(w).name == "retrieval-head" or w.startswith("retrieval_head")
               for w in words)


class Parsed(Exception):
    """Raised right after the real parser accepted the arguments: nothing else runs."""


def wrapper(path: Path):
    """What a thin entry module runs under ``__main__``: ``run_command("<command>", sys.argv[1:],
    "<prog>")`` (the two scripts, ``python -m retrieval_head.heads`` and the like)."""
    found = re.search(r'run_command\("(\w+)", sys\.argv\[1:\], "([^"]+)"\)', path.read_text())
    assert found, f"{path.name} no longer calls run_command(COMMAND, sys.argv[1:], PROG) under __main__"
    run_command = importlib.import_module("retrieval_head.cli.commands").run_command
    return lambda argv: run_command(found[1], argv, found[2])


def entry_point(words: list[str]):
    """The function the shown command would call, and the arguments it would get."""
    for i, w in enumerate(words):
        if w.endswith(SCRIPTS):
            return wrapper(ROOT / Path(w).name), words[i + 1:]
        if Path(w).name == "retrieval-head":
            return importlib.import_module("retrieval_head.cli").main, words[i + 1:]
        if w == "-m" and words[i + 1].startswith("retrieval_head"):
            name = words[i + 1]
            if name == "retrieval_head":  # its __main__ exits on import; it calls the console command
                return importlib.import_module("retrieval_head.cli").main, words[i + 2:]
            return wrapper(Path(importlib.util.find_spec(name).origin)), words[i + 2:]
    raise AssertionError(f"no entry point in {words}")


def all_commands() -> list[tuple[str, list[str]]]:
    return [(p.relative_to(ROOT).as_posix(), c) for p in PAGES for c in commands_in(p.read_text())]


def test_readme_fits_a_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "make demo" in (ROOT / "README.md").read_text() and "make test" in (ROOT / "README.md").read_text()


def test_the_pages_show_commands_of_every_kind():
    """The extraction itself: a test that found no commands could not fail."""
    cmds = [c for _, c in all_commands()]
    kinds = {"detection script": any(any(w.endswith(SCRIPTS[0]) for w in c) for c in cmds),
             "mask script": any(any(w.endswith(SCRIPTS[1]) for w in c) for c in cmds),
             "retrieval-head": any(any(Path(w).name == "retrieval-head" for w in c) for c in cmds),
             "python -m": any("-m" in c and is_toolkit(c) for c in cmds),
             "make": any(c[0] == "make" for c in cmds)}
    assert all(kinds.values()), kinds
    assert len(cmds) >= 40, len(cmds)


@pytest.mark.parametrize("page, words", [pytest.param(p, c, id=f"{p}: {shlex.join(c)[:70]}")
                                         for p, c in all_commands() if c[0] != "make"])
def test_toolkit_command_parses(page, words, monkeypatch, capsys):
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    fn, argv = entry_point(words)
    try:
        code = fn(argv)
    except Parsed:
        return
    except SystemExit as e:  # argparse's error: a renamed or removed option
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{page}: `{shlex.join(words)}` is refused (exit {e.code}): {err[-1] if err else ''}")
    pytest.fail(f"{page}: `{shlex.join(words)}` never reached its parser (returned {code}): "
                f"{capsys.readouterr().err.strip()}")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("page, words", [pytest.param(p, c, id=f"{p}: {shlex.join(c)}")
                                         for p, c in all_commands() if c[0] == "make"])
def test_make_command_exists(page, words, tmp_path):
    targets = [w for w in words[1:] if "=" not in w]
    rules = (ROOT / "Makefile").read_text()
    for t in targets:  # a rule of the Makefile, not a file or folder make finds "up to date"
        assert re.search(rf"^{re.escape(t)}\s*:", rules, re.M), f"{page}: `{shlex.join(words)}`: no rule {t!r}"
    # -n prints the recipes and runs none; a venv path that does not exist keeps it from
    # finding (and judging) a real one
    r = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", *words[1:]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{page}: `{shlex.join(words)}` fails: {r.stderr.strip()}"


def test_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=300)
    warnings = [line for line in r.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert r.returncode == 0, "\n".join(warnings) or r.stderr[-2000:]
    assert (tmp_path / "site" / "reference" / "index.html").is_file()
