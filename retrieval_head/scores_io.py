"""Head-score files, trial logs and atomic writes.

``head_score/<model>.json`` is the original's format, one line of JSON::

    {"0-0": [0.0, 0.25], "0-1": [0.0, 0.0], ..., "29-8": [...]}

one key per query head (``layer-head``, 0-based, layer-major), each list the head's
score in every counted trial (canonical trial order). The original README's snippet
works on it::

    import json, numpy as np
    d = json.loads(open("head_score/SmolLM2-135M-Instruct.json").readline())
    sorted(((k, np.mean(v)) for k, v in d.items()), key=lambda x: -x[1])[:3]
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import UserError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
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
    return json.dumps(obj) + "\n" if one_line else json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_head_scores(path: Path, head_counter: dict[str, list[float]]) -> None:
    """The original's one-line JSON."""
    write_atomic(path, dump_json(head_counter, one_line=True))


def parse_head_key(key: str) -> tuple[int, int]:
    try:
        layer, head = key.split("-")
        return int(layer), int(head)
    except ValueError:
        raise UserError(f"head_score key {key!r} is not 'layer-head'") from None


def load_head_scores(path: Path, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Mean score per head as a float64 ``[layers, heads]`` tensor.

    ``shape`` (the model's [layers, heads]) is checked when given: a file made for
    another model is an error, not a silent mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"head_score file {path} does not exist; run retrieval_head_detection.py first or pass --head_score")
    try:
        data = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    except (json.JSONDecodeError, IndexError, UnicodeDecodeError):
        raise UserError(f"head_score file {path} is not one line of JSON; expected {{\"layer-head\": [scores]}}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"head_score file {path} holds no heads; expected {{\"layer-head\": [scores]}}")
    keys = {parse_head_key(k): v for k, v in data.items()}
    layers = 1 + max(l for l, _ in keys)
    heads = 1 + max(h for _, h in keys)
    if len(keys) != layers * heads:
        raise UserError(f"head_score file {path} has {len(keys)} heads, not a full {layers} x {heads} grid")
    if shape is not None and (layers, heads) != tuple(shape):
        raise UserError(
            f"head_score file {path} is for {layers} layers x {heads} heads, the model has "
            f"{shape[0]} x {shape[1]}; pass the file made for this model"
        )
    out = torch.zeros(layers, heads, dtype=torch.float64)
    for (l, h), v in keys.items():
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) for x in v):
            raise UserError(f"head_score file {path}: {l}-{h} is not a list of numbers")
        out[l, h] = sum(v) / len(v) if v else 0.0
    return out


def top_heads(scores: torch.Tensor, k: int | None = None) -> list[tuple[int, int, float]]:
    """Heads by descending score; ties in layer-major order. ``[(layer, head, score)]``.

    >>> top_heads(torch.tensor([[0.1, 0.5], [0.5, 0.0]]), 2)
    [(0, 1, 0.5), (1, 0, 0.5)]
    """
    flat = scores.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    heads = scores.shape[1]
    return [(i // heads, i % heads, flat[i]) for i in order[: k if k is not None else len(flat)]]


def format_top_table(scores: torch.Tensor, k: int = 20) -> str:
    """A plain-text ranked table of the top ``k`` heads."""
    lines = [f"{'rank':>4}  {'head':>7}  {'score':>6}"]
    for r, (l, h, s) in enumerate(top_heads(scores, k), 1):
        lines.append(f"{r:>4}  {f'{l}-{h}':>7}  {s:6.3f}")
    return "\n".join(lines)


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
