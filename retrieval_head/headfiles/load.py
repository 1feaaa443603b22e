"""Head scores for a model, from a head file of any accepted format: the reader every
command uses (``--head_score``, ``heads``, the judge), the public ``load_head_scores``.

It reads the file (``foreign.read_head_file_any``: the format detected by its content, the
file checked whole) and fits it to the model (``foreign.fit``: the grid checked against the
model's, query heads <-> KV heads converted). The worked example is ``load_head_scores``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .foreign import HeadFile, fit, read_head_file_any
from .original import KV_NAMES, states_kv


def load_head_scores(path: Path, shape=None, unit: str = "query") -> torch.Tensor:
    """Scores per head as a float64 ``[layers, units]`` tensor, from a head file of any
    accepted format (``foreign``: the original's, DuoAttention's pattern folder,
    RazorAttention's, QRHead's, per-layer lists), detected by content.

    The original's format gives each head its mean over trials (0 for 0 counted trials), the file
    checked whole first (``validate_head_scores``). ``shape`` is the model's: a
    ``ModelShape`` (every count known), or ``(layers, units)`` with units in ``unit``; a
    file made for another model is an error, not a silent mismatch. ``unit`` "query" gives
    a column per query head, "kv" per KV head: a per-KV-head file (duo, razor) read per
    query head gives each query head its KV head's score; a per-query-head file read per
    KV head takes each group's max. The original's format is taken as per query head (as
    ``shape=(layers, kv_heads)`` it reads a ``<model>.kv_max.json`` as it is).

    >>> import tempfile
    >>> from retrieval_head.headfiles.original import write_head_scores
    >>> d = Path(tempfile.mkdtemp())
    >>> write_head_scores(d / "m.json", {"0-0": [0.5, 1], "0-1": [0, 0], "0-2": [0, 0], "0-3": [1, 1]})
    >>> load_head_scores(d / "m.json", (1, 4)).tolist()
    [[0.75, 0.0, 0.0, 1.0]]
    >>> load_head_scores(d / "m.json", (1, 2), unit="kv").tolist()   # 2 KV heads: the max of each pair
    [[0.75, 1.0]]
    """
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


def read_stated(path: Path) -> HeadFile:
    """A head file read in the unit it states: its format's, except that the original format
    is per KV head where its name (detection's ``<model>.kv_max.json`` / ``.kv_mean.json``)
    or the detection manifest beside it (columns = the model's KV heads) says so."""
    path = Path(path)
    hf = read_head_file_any(path, file_unit="kv" if path.name.endswith(KV_NAMES) else None)
    if hf.format == "original" and hf.unit == "query" and states_kv(path, hf.scores.shape[1]):
        hf = read_head_file_any(path, file_unit="kv")
    return hf


def load_ranking(path: Path, shape, unit: str | None = None) -> tuple[torch.Tensor, str]:
    """(scores ``[layers, units]``, unit) for ranking ``shape``'s heads by a head file: in
    ``unit``, or (None) in the unit the file states (``read_stated``); a per-KV-head file
    read per query head gives each query head its KV head's score, a per-query-head file read
    per KV head each group's max. What every command's ``--head_score`` / ``--unit`` reads.

    >>> import tempfile
    >>> from retrieval_head.headfiles.original import write_head_scores
    >>> from retrieval_head.models.shape import ModelShape
    >>> d = Path(tempfile.mkdtemp())
    >>> write_head_scores(d / "m.kv_max.json", {"0-0": [0.5], "0-1": [1.0]})
    >>> shape = ModelShape(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, max_positions=64, windows=(None,))
    >>> scores, unit = load_ranking(d / "m.kv_max.json", shape)
    >>> scores.tolist(), unit
    ([[0.5, 1.0]], 'kv')
    >>> load_ranking(d / "m.kv_max.json", shape, "query")[0].tolist()
    [[0.5, 0.5, 1.0, 1.0]]
    """
    hf = read_stated(path)
    unit = unit or hf.unit
    return fit(hf, unit, shape.num_layers, shape.num_heads, shape.num_kv_heads), unit
