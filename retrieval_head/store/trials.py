"""The trial log: one JSON record per line, appended as each trial finishes.

Each append is flushed and fsynced before it returns, so a killed run loses at most the
line being written; ``read`` drops such a torn last line, and a resumed run starts from the
records that survived.

    >>> import tempfile
    >>> log = TrialLog(Path(tempfile.mkdtemp()) / "m.trials.jsonl")
    >>> log.append({"needle_id": 0, "passed": True})
    >>> with open(log.path, "a") as f:
    ...     _ = f.write('{"needle_id": 1, "pas')          # a kill mid-write
    >>> log.read()
    [{'needle_id': 0, 'passed': True}]
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class TrialLog:
    """Append-only JSON-lines log: each record is flushed and fsynced before returning."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """All complete records; a torn last line (a kill mid-write) is dropped."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out
