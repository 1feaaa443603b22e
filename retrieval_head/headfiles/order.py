"""The top-K rule (``ranking``) on plain Python numbers, for commands that answer without
torch (``heads top`` on a JSON file): the same rule, the same heads, the same table.

Scores are rounded as ``torch.round(x, decimals=12)`` rounds (``nearbyint(x * 1e12) / 1e12``,
half to even), then sorted by descending score, ties layer-major (a stable sort).
``tests/test_ranking.py`` holds ``top_rows`` equal to ``ranking.top_heads``.

    >>> top_rows([[0.5 + 1e-15, 0.1 + 0.2], [0.3, 0.5]], 3)
    [(0, 0, 0.500000000000001), (1, 1, 0.5), (0, 1, 0.30000000000000004)]
    >>> print(format_rows(top_rows([[0.1, 0.9]], 1)))
    rank     head   score
       1      0-1   0.900
"""

from __future__ import annotations

DECIMALS = 12  # scores equal to 12 decimals are ties (float arithmetic differs in the last bits)
_SCALE = 10.0 ** DECIMALS


def tie_key(x: float) -> float:
    """``x`` as the ranking compares it: rounded to ``DECIMALS`` places, as torch rounds."""
    return round(x * _SCALE) / _SCALE


def top_rows(grid: list[list[float]], k: int | None = None) -> list[tuple[int, int, float]]:
    """``[(layer, head, score)]`` of the top ``k`` of a ``[layers][heads]`` grid, best first."""
    heads = len(grid[0]) if grid else 0
    flat = [float(x) for row in grid for x in row]
    order = sorted(range(len(flat)), key=lambda i: -tie_key(flat[i]))  # stable: ties stay layer-major
    return [(i // heads, i % heads, flat[i]) for i in order[:k]]


def format_rows(rows: list[tuple[int, int, float]]) -> str:
    """``[(layer, head, score)]`` as a plain-text ranked table."""
    lines = [f"{'rank':>4}  {'head':>7}  {'score':>6}"]
    for r, (l, h, s) in enumerate(rows, 1):
        lines.append(f"{r:>4}  {f'{l}-{h}':>7}  {s:6.3f}")
    return "\n".join(lines)
