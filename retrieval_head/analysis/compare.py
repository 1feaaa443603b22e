"""How far head rankings agree: top-K overlap, Jaccard and Spearman of score grids, for every
pair of files (``retrieval-head heads compare``; the figure is ``plots.heads.compare_figure``).

Worked example: two 2 x 2 score grids that agree on the best head but not the second::

    >>> import torch
    >>> a = torch.tensor([[0.9, 0.1], [0.5, 0.0]])
    >>> b = torch.tensor([[0.8, 0.6], [0.2, 0.0]])
    >>> r = compare(a, b, k=2)
    >>> r["overlap"], r["jaccard"], r["shared"], round(r["spearman"], 3)
    (1, 0.333, [(0, 0)], 0.8)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    import torch

# torch loads inside ``compare``: ``heads top`` on a JSON file answers without it (tests/test_start.py).


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their average rank.

    >>> average_ranks(np.array([10.0, 20.0, 10.0, 30.0])).tolist()
    [1.5, 3.0, 1.5, 4.0]
    """
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)                  # rank of the last member of each tie group
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either side is constant."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def compare(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> dict:
    """Agreement of two ``[layers, heads]`` score grids.

    Returns ``{"k", "overlap", "jaccard", "spearman", "shared"}``: the overlap count and
    Jaccard index (rounded to 3 places) of the two top-``k`` sets (ties broken layer-major,
    as in ``top_heads``), the Spearman correlation over all heads, and the shared heads as
    ``(layer, head)`` in ``a``'s rank order. ``k`` is capped at the number of heads.
    """
    import torch

    from ..headfiles.ranking import top_heads

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.dim() != 2 or b.dim() != 2:
        raise UserError(f"compare needs two [layers, heads] grids, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise UserError(
            f"cannot compare a {a.shape[0]} x {a.shape[1]} grid with a {b.shape[0]} x {b.shape[1]} grid; "
            "pass head scores of models with the same layers and heads"
        )
    if k < 1:
        raise UserError(f"--top must be at least 1, got {k}")
    k = min(k, a.numel())
    top_a = [(l, h) for l, h, _ in top_heads(a, k)]
    top_b = {(l, h) for l, h, _ in top_heads(b, k)}
    shared = [lh for lh in top_a if lh in top_b]
    union = len(set(top_a) | top_b)
    return {
        "k": k,
        "overlap": len(shared),
        "jaccard": round(len(shared) / union, 3),
        "spearman": spearman(a.numpy(), b.numpy()),
        "shared": shared,
    }


def compare_all(grids: dict[str, torch.Tensor], k: int = 20) -> dict:
    """Every pair of ``grids`` (name -> ``[layers, heads]``): ``{"names", "k", "overlap",
    "spearman"}``, the last two as ``n x n`` lists (``compare`` of row i with column j; the
    diagonal is each grid with itself).

    >>> import torch
    >>> r = compare_all({"a": torch.tensor([[3., 2., 1.]]), "b": torch.tensor([[1., 2., 3.]])}, k=1)
    >>> r["overlap"], r["spearman"]
    ([[1, 0], [0, 1]], [[1.0, -1.0], [-1.0, 1.0]])
    """
    names = list(grids)
    pairs = [[compare(grids[a], grids[b], k) for b in names] for a in names]
    return {"names": names, "k": pairs[0][0]["k"], "overlap": [[p["overlap"] for p in row] for row in pairs],
            "spearman": [[p["spearman"] for p in row] for row in pairs]}


def compare_table(r: dict) -> str:
    """Markdown: top-k overlap above the diagonal, Spearman below it."""
    names = r["names"]
    head = "| top-%d overlap \\ Spearman | " % r["k"] + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    rows = []
    for i, a in enumerate(names):
        cells = [str(r["overlap"][i][j]) if j > i else ("-" if j == i else f"{r['spearman'][i][j]:.2f}")
                 for j in range(len(names))]
        rows.append(f"| {a} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"
