"""One top-K rule (``headfiles.ranking``): every place that names "the top K heads" names
the same heads on a near tie.

The grid: head 0-1 scores 0.05 - 1e-15 and head 1-0 scores 0.05 (a tie to 12 decimals, the
later head ahead by 1e-15: the way one mean can come out of two summation orders); 0-0
scores 0.025, 1-1 0.01. By the rule, 0-1 and 1-0 are tied and ties go layer-major, so the
top 1 is 0-1 everywhere (an exact comparison would say 1-0). Scores 1e-11 apart are not
tied: there the higher one wins.
"""

from __future__ import annotations

import json

import pytest
import torch

from retrieval_head.analysis.convergence import convergence
from retrieval_head.analysis.stability import bootstrap, load_trials
from retrieval_head.cli import heads
from retrieval_head.experiments.adaptive import decide
from retrieval_head.experiments.mask import random_pool
from retrieval_head.headfiles.export import keep_set
from retrieval_head.headfiles.load import load_head_scores
from retrieval_head.headfiles.order import top_rows
from retrieval_head.headfiles.original import write_head_scores
from retrieval_head.headfiles.ranking import DECIMALS, select_top, top_heads, top_indices, top_order

NEAR = 1e-15
GRID = [[0.025, 0.05 - NEAR], [0.05, 0.01]]  # [layers, heads]
TOP1 = (0, 1)


def grid(rows=GRID) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def trials(n: int = 4) -> torch.Tensor:
    """``[n, layers, heads]``: every trial the same grid, so every mean is the grid itself."""
    return grid().expand(n, 2, 2).clone()


def test_the_grid_is_a_near_tie():
    s = grid()
    assert s[1, 0] > s[0, 1] and s[1, 0] - s[0, 1] < 2 * NEAR           # 1-0 ahead in the last bits
    assert round(s[0, 1].item(), DECIMALS) == round(s[1, 0].item(), DECIMALS)


def test_the_rule_itself():
    s = grid()
    assert [(l, h) for l, h, _ in top_heads(s)] == [(0, 1), (1, 0), (0, 0), (1, 1)]
    assert top_heads(s, 1) == [(0, 1, 0.05 - NEAR)]                        # the score as given, not rounded
    assert top_order(s) == [1, 2, 0, 3] and top_indices(s.reshape(1, 4), 2).tolist() == [[1, 2]]
    apart = grid([[0.025, 0.05 - 1e-11], [0.05, 0.01]])                    # not a tie: the higher one first
    assert [(l, h) for l, h, _ in top_heads(apart, 2)] == [(1, 0), (0, 1)]
    assert top_heads(grid().float(), 1)[0][:2] == TOP1                     # float32 scores rank the same


@pytest.mark.parametrize("rows", [GRID, [[0.0, 0.0, 0.3], [0.3, 0.1, 0.0]], [[0.2, 0.1 + 0.1, 0.2 + 1e-15]]])
def test_select_top_is_the_torch_free_rule(rows):
    """``ranking.select_top`` (torch, masking's) marks exactly the heads ``order.top_rows``
    (plain Python, ``heads top``'s) lists, for every K, near ties and zero ties included."""
    n = sum(map(len, rows))
    for k in range(1, n + 1):
        want = sorted((l, h) for l, h, _ in top_rows(rows, k))
        assert [tuple(x) for x in select_top(grid(rows), k).nonzero().tolist()] == want, k


def test_masking_export_and_the_table_agree(tmp_path, capsys):
    s = grid()
    assert select_top(s, 1).nonzero().tolist() == [list(TOP1)]
    # random draws exclude the top max(K, 10%) = the top 1: the tied head 1-0 stays in the pool
    assert random_pool(s, 1) == [(0, 0), (1, 0), (1, 1)]
    assert keep_set(s, top=1).nonzero().tolist() == [list(TOP1)]
    path = tmp_path / "m.json"
    write_head_scores(path, {f"{l}-{h}": [GRID[l][h]] * 3 for l in range(2) for h in range(2)})
    assert top_heads(load_head_scores(path, (2, 2)), 1)[0][:2] == TOP1   # the means of the file's lists
    assert heads.main(["top", str(path), "-k", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == ["0-1", "1-0"]


def test_stability_convergence_and_the_adaptive_stop_agree(tmp_path):
    x = trials()
    s = bootstrap(x, k=1, draws=400, seed=0)
    assert s.top == [TOP1]
    # in the draws the two tied heads split the top place at random: neither is stable
    assert s.p_top[0, 1] + s.p_top[1, 0] == pytest.approx(1.0)
    assert 0.3 < s.p_top[0, 1].item() < 0.7 and s.stable_top == []
    assert convergence(x, k=1, seeds=3).final == [TOP1]
    records = [dict(needle_id=0, context_length=100 * (i + 1), depth_percent=0, passed=True,
                    head_scores=GRID) for i in range(4)]
    verdict = decide(records, k=1, confidence=0.95, draws=400)
    assert verdict["counted"] == 4 and not verdict["stable"] and 0.3 < verdict["kept"] < 0.7
    path = tmp_path / "m.trials.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bootstrap(load_trials(path).scores, k=1, draws=50).top == [TOP1]
