"""The grid of a sweep: context lengths, depths, and the key of one cell.

    >>> sweep_lengths(0, 5000, 5)
    [1250, 2500, 3750, 5000]
    >>> sweep_depths(3)
    [0, 50, 100]
    >>> TrialKey.of({"needle_id": 1, "context_length": 300, "depth_percent": 50, "response": "..."})
    TrialKey(needle_id=1, context_length=300, depth_percent=50)
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


class TrialKey(NamedTuple):
    """One cell of a sweep; sorts in canonical (needle, length, depth) order."""

    needle_id: int
    context_length: int
    depth_percent: int

    @classmethod
    def of(cls, record: dict) -> "TrialKey":
        return cls(record["needle_id"], record["context_length"], record["depth_percent"])


def sweep_lengths(s: int, e: int, num: int) -> list[int]:
    """The original's grid, ``round(linspace(s, e, num))``, zeros dropped (with a notice)."""
    if s < 0 or e < 0:
        raise UserError(f"context lengths must be positive, got --s {s} --e {e}")
    if s > e:
        raise UserError(f"--s {s} is larger than --e {e}; swap them")
    if num < 1:
        raise UserError("--num_lengths must be at least 1")
    grid = [int(x) for x in np.round(np.linspace(s, e, num=num, endpoint=True))]
    if 0 in grid:
        log.warning("context length 0 dropped from the grid (as --s 0 in the original does)")
    out = sorted(set(x for x in grid if x > 0))
    if not out:
        raise UserError(f"--s {s} --e {e} leaves no positive context length; raise --e")
    return out


def sweep_depths(num: int) -> list[int]:
    """``round(linspace(0, 100, num))``: 0, 11, 22, ... 100 for 10."""
    if num < 1:
        raise UserError("--num_depths must be at least 1")
    return sorted(set(int(x) for x in np.round(np.linspace(0, 100, num=num, endpoint=True))))
