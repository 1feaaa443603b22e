"""Real-cache conditions through the scheduler against the specification: every row decoded on
a head-wise cache that really drops the streamed heads' keys (``engine.realrows.RealCache``)
gives exactly ``core.reference.masked_trial``'s answer under its stream mask (the masked
simulation is the reference: real == masked, token for token), whatever the levers (prefix
reuse, batched rows, one row at a time, chunked prefills), in phases decode and all, for keep
sets of query heads (some splitting a KV head) and of KV heads, beside masked rows that stay
the reference's; and it records the bytes ``keep.cache_bytes`` predicts for its keep set."""

import pytest
import torch
from helpers import HEADS, KV_HEADS, LAYERS, ids_of, one_thread, tiny_model

from retrieval_head.core.keep import cache_bytes, mixed_heads
from retrieval_head.core.mask import HeadMask
from retrieval_head.core.reference import masked_trial
from retrieval_head.engine.realrows import RealCache
from retrieval_head.engine.scheduler import Job, Levers, Scheduler
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape

STEPS, SINK, RECENT = 6, 4, 3
NEEDLE = [7, 8, 9, 10, 11]
STOP = torch.zeros(128, dtype=torch.bool)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def jobs() -> list[Job]:
    """Three prompts of 300 tokens and one of 320, all over one haystack: insertion points past
    SharedPrefix's 256-token minimum, so each reuses the last one's prefix."""
    base = ids_of(315, seed=5)[0].tolist()
    out = [(at, base[: 300 - len(NEEDLE)]) for at in (262, 275, 290)] + [(270, base)]
    return [Job((len(h), at), Prompt(h[:at] + NEEDLE + h[at:], (at, at + len(NEEDLE)), at, len(h))) for at, h in out]


def conditions(shape: ModelShape) -> list:
    """None, a masked condition and four real ones: query-head and KV-head keep sets, phases
    decode and all."""
    query = torch.tensor([[(l + h) % 3 == 0 for h in range(HEADS)] for l in range(LAYERS)])
    kv = torch.tensor([[True, False], [False, True], [False, False]])
    assert bool(mixed_heads(shape, query).any()) and kv.shape == (LAYERS, KV_HEADS)
    heads = {"query": query, "kv": kv.repeat_interleave(shape.group, dim=1)}  # the query heads each keeps
    real = [RealCache(keep, HeadMask(~heads[unit], "stream", phase, SINK, RECENT))
            for phase in ("decode", "all") for unit, keep in (("query", query), ("kv", kv))]
    return [None, HeadMask(query, "stream", "decode", SINK, RECENT)] + real


LEVERS = {"defaults": Levers(), "one at a time": Levers(batch_tokens=0),
          "independent": Levers(prefix_reuse=False), "prefill chunks": Levers(prefill_chunk=7)}


@pytest.mark.parametrize("levers", LEVERS.values(), ids=LEVERS.keys())
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_real_rows_equal_the_reference_masked_trial_and_hold_the_predicted_bytes(family, levers):
    """mistral: a sliding window of 8 (the streamed heads: recent 3 of it, the sink beyond it)."""
    model = tiny_model(family=family, max_positions=512)
    shape, todo = ModelShape.of(model), jobs()
    masks = conditions(shape)
    heard: list[str] = []
    scheduler = Scheduler(model, shape, STOP, STEPS, levers)
    rows = list(scheduler.run(todo, masks=masks, say=heard.append))
    assert sorted((r.job.key, r.mask) for r in rows) == sorted((j.key, i) for j in todo for i in range(len(masks)))
    got = {(r.job.key, r.mask): r.ids for r in rows}
    itemsize = next(model.parameters()).element_size()
    for r in rows:
        m, ids = masks[r.mask], r.job.prompt.ids
        want = masked_trial(model, ids, STOP, STEPS, m.mask if isinstance(m, RealCache) else m)
        assert r.ids == want, f"prompt {r.job.key} under {r.mask}"
        assert r.seconds > 0
        if not isinstance(m, RealCache):
            assert r.kv_bytes is None and r.kv_bytes_full is None
            continue
        n = len(ids) - 1  # the prompt but its last token: what the cache held before the first step
        at = n if m.phase == "decode" else None
        assert r.kv_bytes == cache_bytes(shape, m.keep, 1, n, itemsize, SINK, RECENT, at)
        assert r.kv_bytes_full == cache_bytes(shape, None, 1, n, itemsize) > r.kv_bytes
    for i, m in enumerate(masks):  # no vacuous pass: the cache's compression changes answers
        if isinstance(m, RealCache):
            assert any(got[j.key, i] != got[j.key, 0] for j in todo), f"condition {i} changed no answer"
    assert any("compressed cache" in line for line in heard)
    if levers.prefix_reuse:
        assert scheduler.stats["prefilled_tokens"] < scheduler.stats["prompt_tokens"]
    if levers.batch_tokens != 0:
        assert max(scheduler.stats["decode_batches"]) > 1
