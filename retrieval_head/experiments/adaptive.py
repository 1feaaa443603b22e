"""The adaptive sweep (``--until_stable K``): run the grid coarse to fine, stop once the top K is stable.

Rounds cover the grid more finely each time, every needle in every round. Each axis
(lengths, depths) is ordered coarse to fine by bisection (``spread_order``: the ends,
the middle, the quarter points...); round 1 takes the first few of each (about
``FIRST`` of the grid), and each later round grows the axis that is least covered until
the cells per needle have grown by at least ``GROWTH``; the last round is the whole grid.

    >>> spread_order(5), spread_order(8)
    ([0, 4, 2, 1, 3], [0, 7, 3, 1, 5, 2, 4, 6])
    >>> [len(r) for r in rounds([0, 1, 2], [500, 1000, 1500, 2000], [0, 25, 50, 75, 100])]  # the demo grid
    [12, 6, 9, 21, 12]

After each round, the counted trials so far are bootstrapped (``stability.bootstrap``)
and the sweep stops when the top K of their means is stable, by one of two rules. The
retrieval score decides, whatever ``--method`` asks for: its passing trials' ``head_scores``
(the sweep always writes the retrieval file beside the other methods'). A round after which
no trial has passed is logged as a warning (nothing to bootstrap; the sweep goes on).

- ``kept`` (the default): a resample's top K keeps on average at least ``confidence`` of
  those K heads (the mean P(top-K) over them; at 0.95 and K = 10, half a head may swap);
- ``every``: every one of the K heads is in the top K of at least ``confidence`` of the
  draws. Strict: two heads nearly tied at the K-th place may never satisfy it (on
  SmolLM2's demo grid the 10th head reaches P = 0.83 with all 60 trials).

The trials of later rounds are never run; the outputs hold the trials that ran.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from ..analysis.stability import bootstrap
from .sweep import TrialKey

log = logging.getLogger(__name__)

FIRST = 1 / 8   # round 1's share of the grid (at least 2 x 2 cells per needle where the grid has them)
GROWTH = 1.5    # each round's cells per needle over the last's, at least
SEED = 0        # the bootstrap's default seed (DetectSettings.seed; recorded in the manifest)
RULES = {
    "kept": "stop after the first round where the top K of the counted trials' means keeps, on average over `draws` "
            "bootstrap resamples of those trials, at least `confidence` of its heads in the resample's top K "
            "(ties at random, seed {seed})",
    "every": "stop after the first round where every head of the top K of the counted trials' means is in the top K "
             "of at least `confidence` of `draws` bootstrap resamples of those trials (ties at random, seed {seed})",
}


def spread_order(n: int) -> list[int]:
    """Indices 0..n-1, coarse to fine: both ends, then the midpoints of the widest gaps."""
    out, gaps = [0] + ([n - 1] if n > 1 else []), [(0, n - 1)]
    while gaps:
        nxt = []
        for lo, hi in gaps:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                out.append(mid)
                nxt += [(lo, mid), (mid, hi)]
        gaps = nxt
    return out


def rounds(needles: list[int], lengths: list[int], depths: list[int]) -> list[list[TrialKey]]:
    """The new trials of each round (canonical order within a round); together, the whole grid."""
    lo, do = spread_order(len(lengths)), spread_order(len(depths))
    nl, nd = len(lo), len(do)
    a, b = min(2, nl), min(2, nd)
    target, out, seen = math.ceil(FIRST * nl * nd), [], set()
    while True:
        while a * b < target and (a < nl or b < nd):
            if b >= nd or (a < nl and a / nl <= b / nd):
                a += 1
            else:
                b += 1
        cells = {(lengths[lo[i]], depths[do[j]]) for i in range(a) for j in range(b)} - seen
        seen |= cells
        out.append(sorted(TrialKey(n, L, d) for n in needles for L, d in cells))
        if a == nl and b == nd:
            return out
        target = math.ceil(GROWTH * a * b)


def decide(records: list[dict], k: int, confidence: float, draws: int, rule: str = "kept", seed: int = SEED) -> dict:
    """One round's verdict from all records so far: the bootstrap (seeded with ``seed``) of the counted ones."""
    import torch

    counted = sorted((r for r in records if r["passed"]), key=TrialKey.of)
    verdict = dict(trials=len(records), counted=len(counted), stable=False)
    if counted:
        s = bootstrap(torch.tensor([r["head_scores"] for r in counted], dtype=torch.float64), k, draws, seed,
                      confidence)
        verdict.update(stable=s.stable if rule == "every" else s.kept >= confidence, kept=round(s.kept, 4),
                       stable_top=len(s.stable_top), min_p_top=round(min(s.p_top[l, h].item() for l, h in s.top), 4),
                       set_equal=round(s.set_equal, 4))
    return verdict


def sweep(trials, settings, run_round: Callable[[list[TrialKey]], list[dict]]) -> tuple[list[dict], dict]:
    """Run ``rounds`` of ``trials`` (a ``sweep.Plan``) through ``run_round`` until ``decide``
    says stop; the records that ran, and the summary the manifest keeps as ``stopping``."""
    grid = rounds([n.needle_id for n in trials.needles], trials.lengths, trials.depths)
    records, verdicts = [], []
    for keys in grid:
        records += run_round(keys)
        verdicts.append(decide(records, settings.until_stable, settings.confidence, settings.draws,
                               settings.stop_rule, settings.seed))
        log.info("round %d of %d: %s", len(verdicts), len(grid), verdicts[-1])
        if not verdicts[-1]["counted"]:
            log.warning("round %d of %d: no trial has passed yet (%d run); the retrieval score decides when to stop, "
                        "so the sweep goes on", len(verdicts), len(grid), len(records))
        if verdicts[-1]["stable"]:
            break
    total = sum(map(len, grid))
    return records, dict(stop_rule=settings.stop_rule, rule=RULES[settings.stop_rule].format(seed=settings.seed),
                         k=settings.until_stable, confidence=settings.confidence, draws=settings.draws,
                         seed=settings.seed,
                         rounds=verdicts, rounds_planned=len(grid), stopped=verdicts[-1]["stable"],
                         trials_run=len(records), trials_grid=total, trials_saved=total - len(records))
