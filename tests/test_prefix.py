"""Prefix reuse and batched decoding change no score and no response (fp32, the default model)."""

import pytest

from retrieval_head.experiments.detect import DetectSettings, detect


def sweep(model, tok, **levers):
    r = detect(model, tok, DetectSettings(context_lengths=(600, 900), depth_percents=(10, 50, 90), **levers),
               progress=False)
    return {(t["needle_id"], t["context_length"], t["depth_percent"]): (t["response_ids"], t["head_scores"])
            for t in r.trials}


@pytest.fixture(scope="module")
def independent(default_model):
    model, tok, _ = default_model
    return sweep(model, tok, prefix_reuse=False, batch_tokens=0)


@pytest.mark.slow
@pytest.mark.parametrize("levers", [dict(), dict(prefix_reuse=True, batch_tokens=0),
                                    dict(prefix_reuse=False, batch_tokens=2000)],
                         ids=["default: reuse + batches", "reuse only", "batches only"])
def test_sweep_levers_are_identical_to_independent_trials(default_model, independent, levers):
    """Prefix reuse and batched decoding (the defaults) give every trial exactly the
    response ids and head scores of independent trials (fp32, the default model)."""
    model, tok, _ = default_model
    assert sweep(model, tok, **levers) == independent and len(independent) == 18


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_shared_prefix_crops_back_past_a_sliding_window(family):
    """Prompts sharing ever longer prefixes (as in insertion order) decode exactly as with
    fresh prefills, also when the shared part is longer than the sliding window."""
    import torch
    from helpers import IdsTokenizer, ids_of, tiny_model

    from retrieval_head.core.decode import greedy_decode
    from retrieval_head.engine.prefix import SharedPrefix

    model = tiny_model(family=family, max_positions=512)
    base = ids_of(120, seed=5)[0].tolist()
    needle = [7, 8, 9, 10, 11]
    prompts = [base[:at] + needle + base[at:] for at in (30, 30, 64, 100)]
    stop = torch.zeros(128, dtype=torch.bool)
    shared = SharedPrefix(model, min_shared=16, min_fraction=0.0)
    with torch.no_grad():
        for p in prompts:
            fresh = greedy_decode(model, IdsTokenizer(), p, stop, 6).ids
            assert greedy_decode(model, IdsTokenizer(), p, stop, 6, cache=shared.cache_for(p)).ids == fresh
    assert shared.reused_tokens >= 30 + 35 + 64
