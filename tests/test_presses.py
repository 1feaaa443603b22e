"""The presses (``retrieval_head/presses``) on tiny hand-built layers with known answers, and the
contract every press keeps (``core/seen.py``): each row keeps exactly ``seen.totals(share)`` keys
over the layer's KV heads (duo at most), no pad, and a left-padded row chooses as it would alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval_head.core.seen import Seen
from retrieval_head.errors import UserError
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.adakv import AdaKV
from retrieval_head.presses.choose import apportion
from retrieval_head.presses.duo import Duo
from retrieval_head.presses.headkv import HeadKV
from retrieval_head.presses.knorm import Knorm
from retrieval_head.presses.pyramidkv import PyramidKV
from retrieval_head.presses.registry import PRESSES, make_press
from retrieval_head.presses.snapkv import SnapKV
from retrieval_head.presses.streaming_llm import StreamingLLM

LAYERS, HEADS, KV, D = 3, 4, 2, 8
SHAPE = ModelShape(LAYERS, HEADS, KV, D, None, (None,) * LAYERS)


def seen_of(keys, queries=None, start=None, layer=0, scale=1.0) -> Seen:
    b, kv, n, d = keys.shape
    queries = torch.zeros(b, kv, 0, d) if queries is None else queries
    start = torch.zeros(b, dtype=torch.long) if start is None else torch.tensor(start)
    return Seen(layer, keys, keys.flip(-1), queries, scale, start)


def random_seen(press, n=40, start=(0, 7, 30), layer=1, seed=0) -> Seen:
    """Three rows (GQA: 4 query heads on 2 KV heads), the second and third left-padded (the third
    shorter than SnapKV's window of 16 used here)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(len(start), KV, n, D, generator=g)
    w = min(press.window, n)
    return seen_of(keys, torch.randn(len(start), HEADS, w, D, generator=g), list(start), layer, D ** -0.5)


def alone(seen: Seen, row: int) -> Seen:
    """Row ``row`` of ``seen`` as it would be seen without its padding."""
    s = int(seen.start[row])
    real = seen.keys.shape[2] - s
    w = seen.queries.shape[2]
    q = seen.queries[row:row + 1, :, w - min(w, real):]
    return Seen(seen.layer, seen.keys[row:row + 1, :, s:], seen.values[row:row + 1, :, s:], q, seen.scale,
                torch.tensor([0]))


SCORES = torch.tensor([[0.9, 0.1], [0.3, 0.8], [0.5, 0.0]])
ALL = [StreamingLLM(sink=3), Duo(SCORES, sink=2, recent=5, length=40), SnapKV(window=16), Knorm(),
       PyramidKV(window=16), AdaKV(SnapKV(window=16)), AdaKV(Knorm(), alpha=0.5), HeadKV(SCORES, window=16)]


@pytest.mark.parametrize("press", ALL, ids=lambda p: f"{p.name}-{getattr(getattr(p, 'press', None), 'name', '')}")
@pytest.mark.parametrize("budget", [0.05, 0.3, 0.75, 1.0])
def test_the_contract(press, budget):
    """Per row: the totals exactly (duo: at most), no pad, the padded rows as alone; shares' mean = budget."""
    shares = press.layer_shares(SHAPE, budget)
    assert len(shares) == LAYERS and all(0 <= s <= 1 + 1e-12 for s in shares)
    if press.name == "duo":
        assert sum(shares) / LAYERS <= budget + 1e-12
    else:
        assert sum(shares) / LAYERS == pytest.approx(budget)
    seen = random_seen(press)
    kept = press.keep(seen, shares[1])
    assert kept.dtype == torch.bool and kept.shape == seen.keys.shape[:3]
    totals = kept.sum((1, 2))
    if press.name == "duo":
        assert (totals <= seen.totals(shares[1])).all()
    else:
        assert totals.tolist() == seen.totals(shares[1]).tolist()
    for row, s in enumerate(seen.start.tolist()):
        assert not kept[row, :, :s].any(), "a pad kept"
        assert torch.equal(kept[row, :, s:], press.keep(alone(seen, row), shares[1])[0]), f"row {row} not as alone"


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("press", ALL[:5], ids=lambda p: p.name)
def test_a_budget_outside_0_1_is_refused(press, budget):
    with pytest.raises(UserError, match=r"in \(0, 1\]"):
        press.layer_shares(SHAPE, budget)


def test_snapkv_keeps_the_pooled_attention_top_of_the_window():
    """Keys 5 e_j; KV head 0's two query heads look at keys 3 and 6, KV head 1's at key 1; the
    window is keys 8-9. Kernel 1: head 0 keeps 3, 6 and the window; head 1 keeps 1, the window,
    and key 0 (the rest tie: the earlier key). Kernel 3 between two peaks keeps the key between."""
    keys = (5 * torch.eye(10))[None, None].expand(1, 2, 10, 10).clone()
    e = torch.eye(10)
    queries = torch.stack([e[3], e[6], e[1], e[1]])[None, :, None, :].expand(1, 4, 2, 10)
    seen = seen_of(keys, queries)
    kept = SnapKV(window=2, kernel=1).keep(seen, 0.4)
    assert [k.nonzero().flatten().tolist() for k in kept[0]] == [[3, 6, 8, 9], [0, 1, 8, 9]]
    queries = torch.stack([e[1], e[3], e[1], e[3]])[None, :, None, :].expand(1, 4, 2, 10)
    pooled = SnapKV(window=2, kernel=3).keep(seen_of(keys, queries), 0.3)
    assert [k.nonzero().flatten().tolist() for k in pooled[0]] == [[2, 8, 9]] * 2
    assert SnapKV(window=2, kernel=1).keep(seen_of(keys, queries), 0.3)[0, 0].nonzero().flatten().tolist() == [1, 8, 9]


def plain_snap(keys, queries, scale, kernel):
    """SnapKV's score of one unpadded row, written plainly from the paper/kvpress: per query head,
    causal softmax of the window queries, mean over them, the keys before the window pooled, mean
    over the group; the window then ranked above all (the later the higher)."""
    kv, n, _ = keys.shape
    heads, w, _ = queries.shape
    out = torch.zeros(kv, n)
    for h in range(heads):
        rows = []
        for i in range(w):
            pos = n - w + i
            rows.append(torch.cat([torch.softmax(queries[h, i] @ keys[h // (heads // kv), :pos + 1].T * scale, 0),
                                   torch.zeros(n - pos - 1)]))
        mean = torch.stack(rows).mean(0)[None, None, : n - w]
        out[h // (heads // kv), : n - w] += F.avg_pool1d(mean, kernel, 1, kernel // 2)[0, 0] / (heads // kv)
    out[:, n - w:] = 2 + torch.arange(w) / w
    return out


@pytest.mark.parametrize("share", [0.6, 0.85])  # 20 and 28 keys a head: the window and more
def test_snapkv_matches_a_plain_computation(share):
    seen = alone(random_seen(SnapKV(window=16), seed=3), 1)
    press = SnapKV(window=16)
    want = plain_snap(seen.keys[0], seen.queries[0], seen.scale, 5)
    got = press.scores(seen)[0]
    assert torch.allclose(got[:, :-16], want[:, :-16], atol=1e-6)
    per_head = int(seen.totals(share)) // KV
    assert torch.equal(press.keep(seen, share)[0].nonzero()[:, 1].reshape(KV, per_head).sort(-1).values,
                       want.topk(per_head, -1).indices.sort(-1).values)


def test_knorm_keeps_the_smallest_norms():
    seen = seen_of(torch.randn(2, KV, 30, D, generator=torch.Generator().manual_seed(1)))
    kept = Knorm().keep(seen, 0.4)  # 24 keys a row: 12 a head
    want = seen.keys.norm(dim=-1).topk(12, -1, largest=False).indices
    assert torch.equal(kept.nonzero()[:, 2].reshape(2, KV, 12), want.sort(-1).values)


def test_streaming_llm_keeps_exactly_sink_and_last():
    seen = seen_of(torch.zeros(2, 3, 20, 1), start=[0, 5])
    kept = StreamingLLM(sink=4).keep(seen, 0.5)  # row 0: 30 keys, 10 a head; row 1: 15 real, 22 keys: 8, 7, 7
    assert kept[0, 0].nonzero().flatten().tolist() == [0, 1, 2, 3, 14, 15, 16, 17, 18, 19]
    assert kept[1].sum(-1).tolist() == [8, 7, 7]
    assert kept[1, 2].nonzero().flatten().tolist() == [5, 6, 7, 8, 17, 18, 19]
    assert StreamingLLM(sink=4).keep(seen, 0.1)[0, 0].nonzero().flatten().tolist() == [0, 1]  # 2 a head < sink


def test_duo_keeps_whole_heads_by_the_ranking():
    """6 KV heads, 40 keys, spans of 7: at 0.5 (120 keys), 2 heads whole (80 + 4 x 7 = 108; 3
    would be 141): 0-0 (0.9) and 1-1 (0.8); ties would go layer-major."""
    press = Duo(SCORES, sink=2, recent=5, length=40)
    assert press.full_heads(SHAPE, 0.5).tolist() == [[True, False], [False, True], [False, False]]
    shares = press.layer_shares(SHAPE, 0.5)
    assert shares == pytest.approx([47 / 80, 47 / 80, 14 / 80])
    keys = torch.zeros(2, KV, 40, 1)
    kept = press.keep(seen_of(keys, start=[0, 10], layer=1), shares[1])
    assert kept[0].sum(-1).tolist() == [7, 40]
    assert kept[0, 0].nonzero().flatten().tolist() == [0, 1, 35, 36, 37, 38, 39]
    assert kept[1].sum(-1).tolist() == [7, 7]  # 30 real keys: round(0.5875 x 60) = 35, no head fits whole
    tied = Duo(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]), sink=2, recent=5, length=40)
    assert tied.full_heads(SHAPE, 0.5).flatten().tolist() == [True, True, False, False, False, False]


def test_adakv_safeguard_keeps_alpha_of_a_low_head():
    """Head 1's keys are all larger than head 0's: Knorm's flattened top-k would give it none;
    each head keeps floor(alpha x total / kv) of its own first."""
    keys = torch.cat([torch.rand(1, 1, 50, D), 10 + torch.rand(1, 1, 50, D)], dim=1)
    seen = seen_of(keys)
    for alpha, want in [(0.0, 0), (0.2, 4), (0.5, 10), (1.0, 20)]:  # 40 keys kept, 20 a head's even share
        kept = AdaKV(Knorm(), alpha=alpha).keep(seen, 0.4)
        assert kept[0, 1].sum() == want and kept.sum() == 40
        smallest = keys[0, 1].norm(dim=-1).topk(want, largest=False).indices.sort().values
        assert torch.equal(kept[0, 1].nonzero().flatten(), smallest)


def test_headkv_budgets_sum_to_the_total_and_follow_the_scores():
    scores = torch.tensor([[3.0, 1.0], [0.0, 6.0], [2.0, 2.0]])
    press = HeadKV(scores, beta=2, window=4)
    for budget in (0.1, 0.3, 0.6, 0.9):
        shares = press.head_shares(SHAPE, budget)
        assert shares.mean().item() == pytest.approx(budget) and shares.max() <= 1
        order = scores.flatten().argsort()
        assert (shares.flatten()[order].diff() >= -1e-12).all(), "a higher score, a smaller share"
    assert press.head_shares(SHAPE, 0.6)[1, 1] == 1.0  # capped: its excess went to the others
    w = press.weights().flatten()
    assert w.mean().item() == pytest.approx(1.0) and w[2].item() == pytest.approx(0.5)  # base 1 - 1/beta
    seen = seen_of(torch.randn(1, KV, 30, D), torch.randn(1, HEADS, 4, D), layer=0)
    kept = press.keep(seen, 0.3)  # 18 keys over 2 heads weighted w = 0.5 + 3 p: 1.14 : 0.71
    assert kept.sum(-1).tolist() == [[11, 7]]


def test_apportion_is_exact_capped_and_monotone():
    weights = torch.tensor([[5.0, 1.0, 0.0, 2.0]])
    for total in range(0, 41):
        counts = apportion(torch.tensor([total]), weights, torch.tensor([10]), 12)[0]
        assert counts.sum() == total and counts.max() <= 10
        assert counts[0] >= counts[3] >= counts[1] >= counts[2]


def test_pyramidkv_layer_shares_are_a_pyramid():
    shape = ModelShape(8, 4, 2, 8, None, (None,) * 8)
    shares = PyramidKV(beta=20).layer_shares(shape, 0.2)
    assert all(a > b for a, b in zip(shares, shares[1:]))
    assert sum(shares) / 8 == pytest.approx(0.2)
    assert shares[0] == pytest.approx(0.4 - 0.01) and shares[-1] == pytest.approx(0.01)  # 2B - B/beta, B/beta
    capped = PyramidKV(beta=20).layer_shares(shape, 0.7)
    assert capped[0] == 1.0 and capped[-1] == pytest.approx(0.4) and sum(capped) / 8 == pytest.approx(0.7)
    assert PyramidKV().layer_shares(ModelShape(1, 4, 2, 8, None, (None,)), 0.3) == [0.3]


def test_make_press():
    scores = torch.rand(LAYERS, KV)
    assert isinstance(make_press("headkv", SHAPE, scores, beta=1.5), HeadKV)
    assert make_press("adakv", SHAPE, press="knorm").press == Knorm()
    assert set(PRESSES) == {"streaming_llm", "duo", "snapkv", "knorm", "pyramidkv", "adakv", "headkv"}
    for name, scores_, params, match in [
        ("duo", None, {}, "ranks heads"), ("duo", torch.rand(LAYERS, HEADS), {}, "KV heads are 3 x 2"),
        ("snapkv", scores, {}, "takes no head file"), ("knorm", None, {"window": 3}, "no parameter window"),
        ("adakv", None, {"press": "duo"}, "wraps a press"), ("snapkv", None, {"kernel": 4}, "kernel odd"),
    ]:
        with pytest.raises(UserError, match=match):
            make_press(name, SHAPE, scores_, **params)
    with pytest.raises(UserError, match="length=N"):
        make_press("duo", SHAPE, scores).layer_shares(SHAPE, 0.5)

