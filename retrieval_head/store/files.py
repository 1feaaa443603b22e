"""Writing a run's files so that a kill never leaves half of one: the atomic write and the
JSON spelling every output uses.

``write_atomic`` writes a temporary file beside the target, fsyncs it and renames it over
the target: a reader sees the old file or the new one, never a torn one (a rename within a
folder is atomic on POSIX and Windows). The file gets the mode the user's umask gives a new
file (``new_file_mode``: 0644 under umask 022), not the temporary file's private 0600.

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


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it.

    Linux (4.7 and later) shows it in /proc/self/status; elsewhere the only way is to set a
    umask and put the old one back, which is process-wide: a thread creating a file between
    the two calls would get mode 0666. That fallback runs only where /proc cannot answer.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the umask's bits."""
    return 0o666 & ~current_umask()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it (parents made).

    The file ends with the umask's mode (``new_file_mode``): ``mkstemp`` makes it 0600, which
    would hide results from the user's group whatever their umask says. The mode is set
    before the rename, so the target never appears with the private mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(obj, one_line: bool = False) -> str:
    """``obj`` as the outputs spell JSON: one line (head-score files), or indented by 2 with
    keys in insertion order (manifests); always newline-terminated."""
    return json.dumps(obj) + "\n" if one_line else json.dumps(obj, indent=2, sort_keys=False) + "\n"
