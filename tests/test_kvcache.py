"""The in-place KV cache and stacked rows: known answers against transformers' DynamicCache
and against decoding each prompt alone (tiny random models; Mistral past its window)."""

import pytest
import torch
from helpers import LAYERS, IdsTokenizer, forward, ids_of, tiny_model
from transformers import DynamicCache

from retrieval_head.core.decode import decode_rows, greedy_decode, prefill
from retrieval_head.core.intervene import ArgmaxProbe
from retrieval_head.core.kvcache import GrowingCache, snapshot, stack_rows


def test_appends_in_place_and_crops_by_moving_the_length():
    c = GrowingCache(reserve=8)
    k = torch.randn(1, 2, 5, 4)
    c.update(k, -k, 0)
    ptr = c.layers[0].keys.data_ptr()
    for _ in range(8):  # within the reserve: no reallocation, no copy of what is there
        c.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)
    assert c.layers[0].keys.data_ptr() == ptr and c.get_seq_length() == 13
    c.crop(-8)
    assert torch.equal(c.layers[0].keys, k) and torch.equal(c.layers[0].values, -k)
    c.update(torch.zeros(1, 2, 9, 4), torch.zeros(1, 2, 9, 4), 0)  # past the capacity: grows, keeps the prefix
    assert c.get_seq_length() == 14 and torch.equal(c.layers[0].keys[..., :5, :], k)
    c.batch_repeat_interleave(3)
    assert c.layers[0].keys.shape == (3, 2, 14, 4) and torch.equal(c.layers[0].keys[2, :, :5], k[0])
    with pytest.raises(ValueError, match="negative"):
        c.crop(2)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_same_logits_as_dynamic_cache(family):
    """Prefill in chunks, then decode steps: bit-identical logits to a DynamicCache."""
    model = tiny_model(family=family, max_positions=512)
    ids = ids_of(140, seed=3)
    grow, dyn = GrowingCache(model.config, reserve=4), DynamicCache(config=model.config)
    for cache in (grow, dyn):
        prefill(model, ids[:, :100], chunk=40, cache=cache)
    for i in range(100, 140):  # 40 steps: past the reserve, so it grows once more
        assert torch.equal(forward(model, ids[:, i : i + 1], grow), forward(model, ids[:, i : i + 1], dyn))


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_stacked_rows_decode_as_each_prompt_alone(family):
    """Equal-length prompts (a needle at different depths, past the sliding window) decoded as
    one batch: each row's tokens and probe argmax positions are those of the prompt alone."""
    model = tiny_model(family=family, max_positions=512)
    base = ids_of(150, seed=5)[0].tolist()
    needle = [7, 8, 9, 10, 11]
    prompts = [base[:at] + needle + base[at:] for at in (10, 70, 140)]
    stop = torch.zeros(128, dtype=torch.bool)
    alone, alone_pos = [], []
    for p in prompts:
        probe, seen = ArgmaxProbe(), []
        alone.append(greedy_decode(model, IdsTokenizer(), p, stop, 9, probe=probe,
                                   on_step=lambda t, tok, pos, seen=seen: seen.append(pos.clone())).ids)
        alone_pos.append(torch.stack(seen))  # [steps, layers, 1, heads]
    rows = [snapshot(prefill(model, torch.tensor([p[:-1]]), cache=GrowingCache())) for p in prompts]
    cache = stack_rows(rows, reserve=9)
    assert cache.layers[0].keys.shape[0] == 3 and rows == [None] * 3  # snapshots released
    seen = [[] for _ in prompts]
    out = decode_rows(model, [p[-1] for p in prompts], len(prompts[0]) - 1, cache, stop, 9, probe=ArgmaxProbe(),
                      on_step=lambda i, t, tok, pos: seen[i].append(pos.clone()))
    assert out == alone
    for i in range(len(prompts)):
        got = torch.stack(seen[i])
        assert got.shape == (9, LAYERS, 1, alone_pos[i].shape[-1]) and torch.equal(got, alone_pos[i])


def test_stacking_refuses_unequal_lengths():
    model = tiny_model()
    a, b = (snapshot(prefill(model, ids_of(n), cache=GrowingCache())) for n in (20, 21))
    with pytest.raises(ValueError, match="same length"):
        stack_rows([a, b], reserve=4)


def test_dropped_caches_are_freed_without_the_cycle_collector(monkeypatch):
    """API code that decodes prompts in a loop holds at most one cache at a time: a dropped
    cache is freed by its reference count, not left for the cycle collector."""
    import gc
    import weakref

    model = tiny_model()
    live, most = weakref.WeakSet(), [0]
    made = GrowingCache.__init__

    def counted(self, *args, **kwargs):
        made(self, *args, **kwargs)
        live.add(self)
        most[0] = max(most[0], len(live))

    monkeypatch.setattr(GrowingCache, "__init__", counted)
    stop = torch.zeros(128, dtype=torch.bool)
    gc.collect()
    gc.disable()
    try:
        for seed in range(10):
            greedy_decode(model, IdsTokenizer(), ids_of(40, seed=seed)[0].tolist(), stop, 4, probe=ArgmaxProbe())
            assert len(live) == 0, f"prompt {seed}: {len(live)} caches still alive"
    finally:
        gc.enable()
    assert most[0] == 1
