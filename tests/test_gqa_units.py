"""GQA-aware results: per-KV-head score files and masking whole KV groups."""

import torch

from retrieval_head.experiments.detect import DetectionResult
from retrieval_head.experiments.mask import make_conditions


def test_kv_counter_aggregates_each_trial_then_lists():
    t1 = dict(needle_id=0, context_length=1, depth_percent=0, passed=True, head_scores=[[1.0, 0.0, 0.25, 0.75]])
    t2 = dict(needle_id=0, context_length=1, depth_percent=50, passed=True, head_scores=[[0.0, 0.5, 0.0, 0.0]])
    t3 = dict(needle_id=0, context_length=2, depth_percent=0, passed=False, head_scores=[[9.0, 9.0, 9.0, 9.0]])
    r = DetectionResult(1, 4, [t2, t3, t1])
    assert r.kv_head_counter(2, "max") == {"0-0": [1.0, 0.5], "0-1": [0.75, 0.0]}
    assert r.kv_head_counter(2, "mean") == {"0-0": [0.5, 0.25], "0-1": [0.5, 0.0]}
    # MHA: one query head per group -> the per-query-head file
    assert r.kv_head_counter(4, "max") == r.head_counter()


def test_kv_unit_masks_every_query_head_of_the_group():
    kv_scores = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.0, 0.8]])  # [layers=2, kv_heads=3]
    none, top = make_conditions("M", [0, 2], kv_scores, "uniform", "decode", [0], False, group=3)
    assert none.mask is None and top.folder == "M_block_top2_kv" and top.unit == "kv"
    expected = torch.zeros(2, 9, dtype=torch.bool)
    expected[0, 0:3] = True
    expected[1, 6:9] = True
    assert torch.equal(top.mask.heads, expected)
