"""Print the architecture support table (markdown) that the README embeds.

Runs, for every family of ``tests/test_families.py``'s ``FAMILIES``, the same checks as
that test file (its ``check_*`` helpers, not copies) on tiny random-weight models:

    .venv/bin/python scripts/support_table.py > table.md

Exit status 1 when a check fails unexpectedly (the cell says why, the traceback goes to
stderr). A family's ``known_failures`` (library problems the test file marks as strict
xfails) show as "✗ known" with the problem in the notes, and do not fail the run. The
detection column needs the default model's tokenizer (``make install``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from test_families import (  # noqa: E402
    FAMILIES,
    build,
    check_detect,
    check_probe,
    check_probe_output,
    check_refused,
    check_uniform,
    check_zero,
    default_tokenizer_or_none,
    one_thread,
)

OK = "✓"


def _cell(known: str | None, fn, *args) -> tuple[str, bool]:
    """(cell text, as expected). ``known``: the library problem this check is expected to show."""
    try:
        fn(*args)
    except Exception as e:  # a failed check is a table cell, not a crash
        if known and isinstance(e, AssertionError):
            return "✗ known", True
        traceback.print_exc(file=sys.stderr)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"✗ {first[:80]}".replace("|", "\\|"), False
    if known:
        print(f"known failure now passes (drop it from known_failures): {known}", file=sys.stderr)
    return OK, True


def rows(tokenizer) -> tuple[list[list[str]], bool]:
    out, all_ok = [], True
    for fam in FAMILIES:
        if fam.refused:
            try:
                msg = check_refused(fam)
                note = f"refused: {msg}"
                ok = True
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                note, ok = f"✗ not refused as expected: {str(e).splitlines()[0][:80]}", False
            all_ok &= ok
            out.append([fam.name, f"`{fam.model_class}`", "—", *["refused"] * 5, note.replace("|", "\\|")])
            continue
        model = build(fam)
        cells = []
        for name, check in (("probe", check_probe), ("probe_output", check_probe_output),
                            ("uniform", check_uniform), ("zero", check_zero)):
            c, ok = _cell(fam.known_failures.get(name), check, fam, model)
            cells.append(c)
            all_ok &= ok
        if tokenizer is None:
            cells.append("skipped (no default tokenizer)")
        else:
            with tempfile.TemporaryDirectory() as d:
                c, ok = _cell(fam.known_failures.get("detect"), check_detect, fam, tokenizer, Path(d))
            cells.append(c)
            all_ok &= ok
        notes = [fam.notes] if fam.notes else []
        notes += [f"**library problem ({k}):** {v}" for k, v in fam.known_failures.items()]
        out.append([fam.name, f"`{fam.model_class}`", ", ".join(fam.features) or "—", *cells,
                    "; ".join(notes).replace("|", "\\|")])
    return out, all_ok


START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def main(argv: list[str] | None = None) -> int:
    """Print the table; with ``--readme`` also replace it between the README's markers."""
    argv = sys.argv[1:] if argv is None else argv
    with one_thread():
        table, ok = rows(default_tokenizer_or_none())
    head = ["family", "model class", "attention features", "probe = eager argmax", "probe output = backend",
            "uniform mask", "zero mask", "detection runs", "notes"]
    lines = [f"Tiny random-weight models, transformers {transformers.__version__}, torch "
             f"{torch.__version__.split('+')[0]}, CPU fp32 (`scripts/support_table.py`).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    text = "\n".join(lines)
    print(text)
    if "--readme" in argv:
        readme = ROOT / "README.md"
        s = readme.read_text()
        a, b = s.index(START) + len(START), s.index(END)
        readme.write_text(s[:a] + "\n" + text + "\n" + s[b:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
