"""Real-cache conditions through the scheduler against the specification: every row decoded on
a head-wise cache that really drops the streamed heads' keys (``engine.realrows.RealCache``)
gives exactly ``core.reference.masked_trial``'s answer under its stream mask (the masked
simulation is the reference: real == masked, token for token), whatever the levers (prefix
reuse, batched rows, one row at a time, chunked prefills), in phases decode and all, for keep
sets of query heads (some splitting a KV head) and of KV heads, beside masked rows that stay
the reference's; and it records the bytes ``keep.cache_bytes`` predicts for its keep set.
Presses on the real pressed cache (``RealPress``) likewise answer as the masked press rows."""

import pytest
import torch
from helpers import HEADS, KV_HEADS, LAYERS, ids_of, tiny_model

from retrieval_head.core.headwise_attend import generate as headwise_generate
from retrieval_head.core.keep import cache_bytes, mixed_heads, pressed_bytes
from retrieval_head.core.mask import HeadMask, PressMask
from retrieval_head.core.pressed import PressedCache
from retrieval_head.core.reference import masked_trial
from retrieval_head.engine.realrows import RealCache, RealPress
from retrieval_head.engine.scheduler import Job, Levers, Scheduler
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.duo import Duo
from retrieval_head.presses.knorm import Knorm
from retrieval_head.presses.snapkv import SnapKV
from retrieval_head.presses.streaming_llm import StreamingLLM

STEPS, SINK, RECENT = 6, 4, 3
NEEDLE = [7, 8, 9, 10, 11]
STOP = torch.zeros(128, dtype=torch.bool)

pytestmark = pytest.mark.usefixtures("one_thread_module")


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


def presses() -> list[PressMask]:
    duo = Duo(torch.arange(6.0).reshape(LAYERS, 2), sink=2, recent=16)  # planned at each prompt's length
    return [PressMask(SnapKV(window=8, kernel=3), 0.25), PressMask(Knorm(), 0.5), PressMask(StreamingLLM(), 0.1),
            PressMask(duo, 0.3)]


@torch.no_grad()
def pressed_alone(model, shape: ModelShape, ids: list[int], m: PressMask) -> list[torch.Tensor]:
    """The keep sets of a pressed cache the prompt alone fills (``headwise_generate``, one step)."""
    cache = PressedCache(shape, m.planned(len(ids)), m.budget)
    x = torch.tensor([ids])
    headwise_generate(model, cache, input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=1, do_sample=False,
                      pad_token_id=0)
    return cache.kept()


@pytest.mark.parametrize("levers", [Levers(), Levers(batch_tokens=0), Levers(prefill_chunk=7)],
                         ids=["defaults", "one at a time", "prefill chunks"])
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_real_press_rows_equal_the_masked_press_rows_and_hold_the_predicted_bytes(family, levers):
    """A press on the real pressed cache (``RealPress``: the plain prefill absorbed up to the
    press's window, the window re-run, compressed in the first decode step) answers as the
    scheduler's masked press row of the same prompt (tests/test_schedule_press.py: each equal to
    a plain generate inside the press's scope), keeps the same keys, and holds the bytes
    ``keep.pressed_bytes`` predicts for the keep sets the prompt alone gives a pressed cache."""
    model = tiny_model(family=family, max_positions=512)
    shape, todo, masked = ModelShape.of(model), jobs(), presses()
    masks = [None, *masked, *(RealPress(m) for m in masked)]
    rows = list(Scheduler(model, shape, STOP, STEPS, levers).run(todo, masks=masks))
    assert sorted((r.job.key, r.mask) for r in rows) == sorted((j.key, i) for j in todo for i in range(len(masks)))
    got = {(r.job.key, r.mask): r for r in rows}
    itemsize, n = next(model.parameters()).element_size(), len(masked)
    changed = set()
    for j in todo:
        ids = j.prompt.ids
        for k, m in enumerate(masked):
            simulated, real = got[j.key, 1 + k], got[j.key, 1 + n + k]
            assert real.ids == simulated.ids, f"{j.key} under {m.press.name}"
            assert real.kept_keys == simulated.kept_keys and simulated.kv_bytes is None
            want = pressed_bytes(pressed_alone(model, shape, ids, m), len(ids), shape.head_dim, itemsize)
            assert real.kv_bytes == want < real.kv_bytes_full == cache_bytes(shape, None, 1, len(ids), itemsize)
            if real.ids != got[j.key, 0].ids:
                changed.add(m.press.name)
    # no vacuous pass: every press changes some answer (mistral's window of 8 is all SnapKV's window keeps)
    assert changed == ({"snapkv", "knorm", "streaming_llm", "duo"} if family == "llama" else {"knorm"}), changed


def test_a_real_press_on_a_prompt_shorter_than_its_window_answers_as_masked():
    """A prompt of 45 tokens under SnapKV's window of 64: the press reads every query the prompt
    has (the window clamped to the prompt, as the masked press does), on the real cache too."""
    model = tiny_model(family="llama", max_positions=512)
    base = ids_of(40, seed=3)[0].tolist()
    ids = base[:20] + NEEDLE + base[20:]
    job = Job((len(base), 20), Prompt(ids, (20, 20 + len(NEEDLE)), 20, len(base)))
    m = PressMask(SnapKV(), 0.25)
    assert m.press.window > len(ids)
    scheduler = Scheduler(model, ModelShape.of(model), STOP, STEPS, Levers())
    rows = {r.mask: r for r in scheduler.run([job], masks=[m, RealPress(m)])}
    assert rows[1].ids == rows[0].ids and rows[1].kept_keys == rows[0].kept_keys > 0
