"""The Python examples the docs promise to run as written do run, and their asserts hold.

A fenced ``python`` block counts when the paragraph just above it says "runs as written"
(docs/api.md's head-wise cache example: both documented calls, and every KV head full equal
to transformers' own greedy ``generate``). Each block runs in a fresh namespace, offline.

    >>> page = "This block runs as\\nwritten:\\n\\n```python\\nx = 1\\n```\\n```python\\ny = 2\\n```\\n"
    >>> [code for _, code in examples(page)]
    ['x = 1\\n']
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import one_thread

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "runs as written"


def paragraph_above(lines: list[str], i: int) -> str:
    """The paragraph ending just above line ``i`` (blank lines between skipped), on one line."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    above = []
    while j >= 0 and lines[j].strip():
        above.insert(0, lines[j].strip())
        j -= 1
    return " ".join(above)


def examples(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each python block whose fence follows a paragraph saying ``MARK``."""
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^```(python|py)\s*$", line) and MARK in paragraph_above(lines, i):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            out.append((i + 1, "\n".join(lines[i + 1:end]) + "\n"))
    return out


CASES = [pytest.param(page, code, id=f"{page.relative_to(ROOT).as_posix()}:{line}")
         for page in PAGES for line, code in examples(page.read_text(encoding="utf-8"))]


def test_the_api_page_has_a_runnable_example():
    """The extraction itself: a test that found no block could not fail."""
    assert any("docs/api.md" in p.id and "headwise_generate" in p.values[1] for p in CASES)


@pytest.mark.parametrize("page, code", CASES)
def test_the_example_runs_as_written(page, code, capsys):
    with one_thread():
        # dont_inherit: the block runs as a user's script would, without this file's
        # ``from __future__ import annotations`` (which would turn its annotations into strings)
        exec(compile(code, str(page), "exec", dont_inherit=True), {"__name__": "__doc_example__"})
