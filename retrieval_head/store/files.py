"""Writing a run's files so that a kill never leaves half of one: the atomic write and the
JSON spelling every output uses.

``write_atomic`` writes a temporary file beside the target, fsyncs it and renames it over
the target: a reader sees the old file or the new one, never a torn one (a rename within a
folder is atomic on POSIX and Windows).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "sub" / "x.json"
    >>> write_atomic(p, dump_json({"a": [1, 2]}, one_line=True))
    >>> p.read_text()
    '{"a": [1, 2]}\\n'
    >>> dump_json({"a": 1})
    '{\\n  "a": 1\\n}\\n'
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it (parents made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(obj, one_line: bool = False) -> str:
    """``obj`` as the outputs spell JSON: one line (head-score files), or indented by 2 with
    keys in insertion order (manifests); always newline-terminated."""
    return json.dumps(obj) + "\n" if one_line else json.dumps(obj, indent=2, sort_keys=False) + "\n"
