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
import math
import os
import re
import tempfile
from pathlib import Path

import torch

from ..errors import UserError


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


FORMAT = '{"layer-head": [score per trial]}'
_KEY = re.compile(r"([0-9]+)-([0-9]+)")
_REGENERATE = "regenerate it with retrieval_head_detection.py"


def parse_head_key(key: str) -> tuple[int, int]:
    """``"layer-head"`` (two non-negative integers) as ``(layer, head)``.

    >>> parse_head_key("12-3")
    (12, 3)
    """
    m = _KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        raise UserError(f"head_score key {key!r} is not 'layer-head' (two non-negative integers, e.g. '0-3')")
    return int(m[1]), int(m[2])


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_head_file(path: Path) -> dict:
    """The raw ``{"layer-head": [scores]}`` object of a head-score file's first line,
    unchecked beyond being JSON (see ``validate_head_scores``); a key written twice is an
    error here, since ``json.loads`` would silently keep the last one."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"head_score path {path} is a folder, not a file; pass --head_score FILE (a head_score/*.json)")
    if not path.is_file():
        raise UserError(f"head_score file {path} does not exist; run retrieval_head_detection.py first or pass --head_score")
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0]
    except OSError as e:
        raise UserError(f"cannot read head_score file {path}: {e.strerror or e}; check its permissions") from None
    except (IndexError, UnicodeDecodeError):
        raise UserError(f"head_score file {path} is not one line of JSON; expected {FORMAT}") from None
    try:
        return json.loads(first, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError:
        raise UserError(f"head_score file {path} is not one line of JSON; expected {FORMAT}") from None
    except _DuplicateKey as e:
        raise UserError(f"head_score file {path} names key {e.args[0]!r} twice; a merged or hand-edited file? "
                        f"{_REGENERATE}") from None


def _describe(x) -> str:
    """A JSON value as the file spells it, and its kind where that is the problem.

    >>> [_describe(x) for x in (float("nan"), True, "0.5", None, [1], {}, 2.5)]
    ['NaN', 'true (a boolean)', '"0.5" (a string)', 'null', 'a list', 'an object', '2.5']
    """
    if isinstance(x, (list, dict)):
        return "a list" if isinstance(x, list) else "an object"
    text = json.dumps(x)
    text = text if len(text) <= 30 else text[:27] + "..."
    kind = {bool: "a boolean", str: "a string"}.get(type(x))
    return f"{text} ({kind})" if kind else text


def _finite_number(x) -> bool:
    if type(x) not in (int, float):  # bool is an int subclass: true would count as 1
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def validate_head_scores(data, path: Path | str = "<data>",
                         shape: tuple[int, int] | None = None) -> dict[tuple[int, int], list]:
    """Check a head-score object WHOLE; return ``{(layer, head): [scores]}``.

    Keys ``layer-head`` (non-negative integers), each head once, a full layers x heads
    grid (of ``shape`` when given), every value a list of finite numbers (not booleans),
    all lists the same length (one score per counted trial; 0 trials: all empty).

    >>> validate_head_scores({"0-0": [0.5, 1], "0-1": [0, 0.25]})
    {(0, 0): [0.5, 1], (0, 1): [0, 0.25]}
    >>> validate_head_scores({"0-0": [0.5, 1], "0-1": [0]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    retrieval_head.errors.UserError: head_score file <data>: lists are not the same length (0-0 has 2 scores, 0-1 has 1); ...
    """
    where = f"head_score file {path}"
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where} holds no heads; expected {FORMAT}")
    keys: dict[tuple[int, int], list] = {}
    spelled: dict[tuple[int, int], str] = {}
    for k, v in data.items():
        try:
            lh = parse_head_key(k)
        except UserError:
            raise UserError(f"{where}: key {k!r} is not 'layer-head' (two non-negative integers, e.g. '0-3'); "
                            f"expected {FORMAT}") from None
        if lh in keys:
            raise UserError(f"{where} names head {lh[0]}-{lh[1]} twice ({spelled[lh]!r} and {k!r}); a merged or "
                            f"hand-edited file? {_REGENERATE}")
        keys[lh], spelled[lh] = v, k
    layers = 1 + max(l for l, _ in keys)
    heads = 1 + max(h for _, h in keys)
    if len(keys) != layers * heads:
        gap = next(f"{l}-{h}" for l in range(layers) for h in range(heads) if (l, h) not in keys)
        raise UserError(f"{where} has {len(keys)} heads, not a full {layers} x {heads} grid (no {gap}); {_REGENERATE}")
    if shape is not None and (layers, heads) != tuple(shape):
        raise UserError(
            f"{where} is for {layers} layers x {heads} heads, the model has "
            f"{shape[0]} x {shape[1]}; pass the file made for this model"
        )
    first = None
    for (l, h), v in sorted(keys.items()):
        if not isinstance(v, list):
            raise UserError(f"{where}: {l}-{h} is {_describe(v)}, not a list of numbers; expected {FORMAT}")
        bad = next((i for i, x in enumerate(v) if not _finite_number(x)), None)
        if bad is not None:
            raise UserError(f"{where}: {l}-{h} holds {_describe(v[bad])} at trial {bad}; every score must be a "
                            f"finite number: a corrupted file? {_REGENERATE}")
        if first is None:
            first = (l, h, len(v))
        elif len(v) != first[2]:
            raise UserError(f"{where}: lists are not the same length ({first[0]}-{first[1]} has {first[2]} scores, "
                            f"{l}-{h} has {len(v)}); every head needs one score per trial: a merged or corrupted "
                            f"file? {_REGENERATE}")
    return keys


def load_head_scores(path: Path, shape=None, unit: str = "query") -> torch.Tensor:
    """Scores per head as a float64 ``[layers, units]`` tensor, from a head file of any
    accepted format (``head_files``: this format, DuoAttention's pattern folder,
    RazorAttention's, QRHead's, per-layer lists), detected by content.

    This format gives each head its mean over trials (0 for 0 counted trials), the file
    checked whole first (``validate_head_scores``). ``shape`` is the model's: a
    ``ModelShape`` (every count known), or ``(layers, units)`` with units in ``unit``; a
    file made for another model is an error, not a silent mismatch. ``unit`` "query" gives
    a column per query head, "kv" per KV head: a per-KV-head file (duo, razor) read per
    query head gives each query head its KV head's score; a per-query-head file read per
    KV head takes each group's max. This format is taken as per query head (as
    ``shape=(layers, kv_heads)`` it reads a ``<model>.kv_max.json`` as it is).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> write_head_scores(d / "m.json", {"0-0": [0.5, 1], "0-1": [0, 0], "0-2": [0, 0], "0-3": [1, 1]})
    >>> load_head_scores(d / "m.json", (1, 4)).tolist()
    [[0.75, 0.0, 0.0, 1.0]]
    >>> load_head_scores(d / "m.json", (1, 2), unit="kv").tolist()   # 2 KV heads: the max of each pair
    [[0.75, 1.0]]
    """
    from .foreign import fit, read_head_file_any  # head_files builds on this module

    if unit not in ("query", "kv"):
        raise ValueError(f"unit must be 'query' or 'kv', got {unit!r}")
    layers = heads = kv_heads = None
    if hasattr(shape, "num_kv_heads"):  # a ModelShape
        layers, heads, kv_heads = shape.num_layers, shape.num_heads, shape.num_kv_heads
    elif shape is not None:
        layers, units = shape
        heads, kv_heads = (units, None) if unit == "query" else (None, units)
    # this format is per query head: with the query-head grid known, check it before its values
    grid = (layers, heads) if layers is not None and heads is not None else None
    return fit(read_head_file_any(Path(path), grid=grid), unit, layers, heads, kv_heads)


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
