"""Print the architecture support table (markdown) that docs/models.md embeds.

Runs ``tests/test_families.py`` under pytest, in a subprocess (so the table shows exactly
what ``make test`` checks), and tabulates each test's outcome per family; the rows' names,
model classes, features and notes come from ``families``:

    .venv/bin/python scripts/support_table.py > table.md
    .venv/bin/python scripts/support_table.py --docs        # also rewrite the table in docs/models.md

A cell is ✓ when its test passed and "✗ <first line of the failure>" otherwise, e.g. a
Mistral row whose zero-mask check fails::

    | Mistral | ... | GQA, sliding window | ✓ | ✓ | ✓ | ✗ zero mode left the head's output non-zero | ✓ | ... |

A refused family's notes give the library's refusal (``check_supported`` on its tiny model).
Exit status 1 when any check fails or does not run (pytest's own report goes to stderr).
The detection column needs the default model's tokenizer (``make install``); without it its
cells say "skipped" and do not fail the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from families import FAMILIES, Family, build  # noqa: E402

from retrieval_head.core.decode import check_supported  # noqa: E402
from retrieval_head.errors import UnsupportedModelError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/test_families.py"
OK = "✓"
# the table's check columns, by the test function that checks them
COLUMNS = {
    "probe = eager argmax": "test_probe_argmax_equals_eager",
    "probe output = backend": "test_probe_output_equals_backend",
    "uniform mask": "test_uniform_mask",
    "zero mask": "test_zero_mask",
    "detection runs": "test_detection_runs",
}
FEATURES_TEST, REFUSED_TEST = "test_declared_features_are_real", "test_refused_by_class_name"


def run_tests() -> dict[str, tuple[str, str]]:
    """``{"test_zero_mask[Mistral]": (outcome, message)}`` for every test of ``TEST_FILE``;
    outcome is ``passed``, ``failed``, ``error`` or ``skipped``, message pytest's reason."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "families.xml"
        cmd = [sys.executable, "-m", "pytest", TEST_FILE, "-q", "-p", "no:cacheprovider", f"--junit-xml={xml}"]
        # stdout is the table's: pytest's report goes to stderr
        proc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr)
        if proc.returncode not in (0, 1) or not xml.is_file():  # 0 all passed, 1 some failed
            raise SystemExit(f"pytest could not run {TEST_FILE} (exit status {proc.returncode})")
        suite = ET.parse(xml).getroot()
    results = {}
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        # a failure or error outranks a skip (a teardown error can follow either)
        for tag in ("skipped", "error", "failure"):
            found = case.find(tag)
            if found is not None:
                outcome, message = {"failure": "failed"}.get(tag, tag), found.get("message", "")
        results[case.get("name")] = (outcome, message)
    return results


def first_line(message: str) -> str:
    """The failure's first line, without the ``AssertionError:`` every assert starts with."""
    line = (message.strip().splitlines() or ["(no message)"])[0]
    return line.removeprefix("AssertionError: ")[:80]


def cell(results: dict, test: str, fam: Family) -> tuple[str, bool]:
    """(cell text, check passed or skipped) for one test of one family."""
    outcome, message = results.get(f"{test}[{fam.name}]", ("missing", "not run"))
    if outcome == "passed":
        return OK, True
    if outcome == "skipped":
        return f"skipped: {message}", True
    return f"✗ {first_line(message)}", False


def refusal(fam: Family) -> str:
    """The library's own refusal message for the family's tiny model."""
    try:
        check_supported(build(fam))
    except UnsupportedModelError as e:
        return f"refused: {e}"
    return "✗ not refused"


def rows(results: dict) -> tuple[list[list[str]], bool]:
    """One markdown row per family, and whether every check passed."""
    out, all_ok = [], True
    for fam in FAMILIES:
        if fam.refused:
            note, ok = cell(results, REFUSED_TEST, fam)
            note = refusal(fam) if note == OK else note
            all_ok &= ok
            out.append([fam.name, f"`{fam.model_class}`", "—", *["refused"] * len(COLUMNS), note])
            continue
        features = ", ".join(fam.features) or "—"
        checked, ok = cell(results, FEATURES_TEST, fam)
        features = features if ok else f"{features} ({checked})"
        all_ok &= ok
        cells = []
        for test in COLUMNS.values():
            c, ok = cell(results, test, fam)
            cells.append(c)
            all_ok &= ok
        out.append([fam.name, f"`{fam.model_class}`", features, *cells, fam.notes])
    return [[c.replace("|", "\\|") for c in r] for r in out], all_ok


START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def main(argv: list[str] | None = None) -> int:
    """Print the table; with ``--docs`` also replace it between the markers of ``docs/models.md``."""
    argv = sys.argv[1:] if argv is None else argv
    table, ok = rows(run_tests())
    head = ["family", "model class", "attention features", *COLUMNS, "notes"]
    lines = [f"Tiny random-weight models, transformers {transformers.__version__}, torch "
             f"{torch.__version__.split('+')[0]}, CPU fp32 (`scripts/support_table.py`).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    text = "\n".join(lines)
    print(text)
    if "--docs" in argv:
        page = ROOT / "docs" / "models.md"
        s = page.read_text()
        a, b = s.index(START) + len(START), s.index(END)
        page.write_text(s[:a] + "\n" + text + "\n" + s[b:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
