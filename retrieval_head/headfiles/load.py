"""Head scores for a model, from a head file of any accepted format: the reader every
command uses (``--head_score``, ``heads``, the judge), the public ``load_head_scores``.

It reads the file (``foreign.read_head_file_any``: the format detected by its content, the
file checked whole) and fits it to the model (``foreign.fit``: the grid checked against the
model's, query heads <-> KV heads converted). The worked example is ``load_head_scores``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .foreign import fit, read_head_file_any


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
