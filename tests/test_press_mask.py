"""A condition that carries a press (``mask.PressMask``): what it records, the hook it builds,
and what it refuses, each before any work or at the first call that would go wrong (a
prefill outside the scope, a cache that drops keys, a new prompt never told its point, a
press that answers the wrong shape)."""

from __future__ import annotations

import pytest
import torch
from families import SUPPORTED, build
from helpers import one_thread
from press_oracle import BUDGET, LENGTH, NormPress, SnapPress, batch

from retrieval_head.core.decode import cache_kwarg
from retrieval_head.core.intervene import PressMask, intervene
from retrieval_head.core.kvcache import GrowingCache
from retrieval_head.core.pressing import PressHeads
from retrieval_head.engine.scheduler import Levers, Scheduler
from retrieval_head.models.shape import ModelShape


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def family(name: str):
    model = build(next(f for f in SUPPORTED if f.name == name))
    return model, ModelShape.of(model), batch(model.get_output_embeddings().weight.shape[0])["input_ids"][1:]


def test_a_press_mask_records_the_press_its_parameters_and_the_budget():
    mask = PressMask(SnapPress(window=6), 0.25, "context")
    assert mask.describe() == {"press": "snap_like", "params": {"window": 6}, "budget": 0.25, "phase": "context"}
    _, shape, _ = family("Llama (GQA)")
    hook = mask.hook(shape, 30)
    assert isinstance(hook, PressHeads) and hook.shares == pytest.approx(SnapPress().layer_shares(shape, 0.25))
    assert hook.at.tolist() == [30]


@pytest.mark.parametrize("args, match", [((0.25, "all"), "only streaming heads"), ((0.0, "decode"), r"in \(0, 1\]"),
                                         ((1.5, "context"), r"in \(0, 1\]")])
def test_a_press_mask_refuses_phase_all_and_a_budget_out_of_range(args, match):
    with pytest.raises(ValueError, match=match):
        PressMask(NormPress(), *args)


def test_a_press_mask_must_be_told_its_compression_point():
    model, shape, _ = family("Llama (GQA)")
    before = model.config._attn_implementation
    for kw in ({"mask": PressMask(NormPress(), BUDGET)}, {"hooks": [PressMask(NormPress(), BUDGET)]}):
        with pytest.raises(ValueError, match="told per prompt"), intervene(model, **kw):
            pass
    assert model.config._attn_implementation == before
    with pytest.raises(ValueError, match="phase all is only"):
        PressHeads(NormPress(), [BUDGET] * shape.num_layers, None)
    with pytest.raises(ValueError, match="2 layer shares for a model of 3 layers"), \
            intervene(model, hooks=[PressHeads(NormPress(), [BUDGET] * 2, LENGTH)]):
        pass
    assert model.config._attn_implementation == before


def test_the_scheduler_runs_no_press_under_the_probe():
    """Presses run there (tests/test_schedule_press.py), but not beside detection's probe or tap."""
    model, shape, _ = family("Llama (GQA)")
    scheduler = Scheduler(model, shape, torch.zeros(128, dtype=torch.bool), 2, Levers())
    with pytest.raises(ValueError, match="without the probe"):
        list(scheduler.run([], masks=[None, PressMask(NormPress(), BUDGET, "context")], probe=True))


def test_a_planned_press_is_planned_at_the_compression_point():
    from retrieval_head.presses.duo import Duo

    _, shape, _ = family("Llama (GQA)")
    duo = Duo(torch.ones(shape.num_layers, shape.num_kv_heads))
    mask = PressMask(duo, 0.5)
    assert mask.hook(shape, 30).press.length == 30 and mask.planned(40).length == 40
    assert PressMask(Duo(duo.scores, length=12), 0.5).hook(shape, 30).press.length == 12  # its own kept
    assert mask.describe()["params"]["scores"] == f"tensor [{shape.num_layers}, {shape.num_kv_heads}]"


@torch.no_grad()
def test_a_prefill_outside_the_scope_is_refused_at_the_first_decode_step():
    model, shape, ids = family("Llama (GQA)")
    kw = {cache_kwarg(model): GrowingCache(), "use_cache": True}
    model(input_ids=ids, **kw)  # the press never sees it
    with pytest.raises(RuntimeError, match="never compressed at 40"), \
            intervene(model, hooks=[PressMask(NormPress(), BUDGET).hook(shape, LENGTH)]):
        model(input_ids=ids[:, :1], **kw)


@torch.no_grad()
def test_a_cache_that_drops_keys_is_refused():
    """transformers' own cache keeps only a sliding layer's window: the positions the hook
    reads would be wrong, so the first decode step says to keep every key."""
    model, shape, ids = family("Mistral")
    with pytest.raises(RuntimeError, match="GrowingCache"), \
            intervene(model, hooks=[PressMask(NormPress(), BUDGET).hook(shape, LENGTH)]):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)


@torch.no_grad()
def test_a_new_prompt_must_be_told_its_point():
    """A second prompt in one scope: refused until ``compress(at)`` tells its point, then
    compressed afresh (the first prompt's keep sets dropped)."""
    model, shape, ids = family("Llama (GQA)")
    hook = PressMask(NormPress(), BUDGET).hook(shape, LENGTH)
    with intervene(model, hooks=[hook]):
        model.generate(input_ids=ids, cache=GrowingCache(), max_new_tokens=2, do_sample=False)
        with pytest.raises(RuntimeError, match="call compress"):
            model.generate(input_ids=ids[:, :30], cache=GrowingCache(), max_new_tokens=2, do_sample=False)
        hook.compress(30)
        model.generate(input_ids=ids[:, :30], cache=GrowingCache(), max_new_tokens=2, do_sample=False)
    assert all(k.shape[-1] == 30 for k in hook.kept.values()) and sorted(hook.done) == [0, 1, 2]


class WrongShape(NormPress):
    def keep(self, seen, share):
        return super().keep(seen, share)[:, :, :-1]


@torch.no_grad()
def test_a_press_answering_the_wrong_shape_is_refused():
    model, shape, ids = family("Llama (GQA)")
    with pytest.raises(ValueError, match=r"answered torch.bool \[1, 2, 39\], not bool \[1, 2, 40\]"), \
            intervene(model, hooks=[PressMask(WrongShape(), BUDGET).hook(shape, LENGTH)]):
        model.generate(input_ids=ids, cache=GrowingCache(), max_new_tokens=2, do_sample=False)
