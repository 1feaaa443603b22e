"""Press conditions in the scheduler: every (job, press) row it yields is what the prompt gives
alone under ``intervene(model, hooks=[PressHeads(...)])`` around a plain greedy ``generate``
(the whole prompt prefilled inside the scope, compressed at its length), whatever the levers
(prefix reuse, batched rows, rows in chunks, chunked prefills), beside unmasked and masked rows
that stay what ``greedy_decode`` gives them; each prompt is prefilled once, its presses
re-running only its last window of tokens (phase context: from the window before the
context's end, one press at a time)."""

import dataclasses

import pytest
import torch
from helpers import HEADS, LAYERS, IdsTokenizer, ids_of, one_thread, tiny_model

from retrieval_head.core.decode import greedy_decode
from retrieval_head.core.intervene import HeadMask, PressMask, intervene
from retrieval_head.core.kvcache import GrowingCache
from retrieval_head.engine.scheduler import Job, Levers, Scheduler, passes
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.duo import Duo
from retrieval_head.presses.knorm import Knorm
from retrieval_head.presses.snapkv import SnapKV
from retrieval_head.presses.streaming_llm import StreamingLLM

STEPS = 6
NEEDLE = [7, 8, 9, 10, 11]
STOP = torch.zeros(128, dtype=torch.bool)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def jobs(length=300, at=(262, 275, 290)):
    """Three prompts of one length; insertion points past SharedPrefix's 256-token minimum, so
    the last two reuse the first one's prefix."""
    base = ids_of(length - len(NEEDLE), seed=5)[0].tolist()
    return [Job(("cell", a), Prompt(base[:a] + NEEDLE + base[a:], (a, a + len(NEEDLE)), a, len(base))) for a in at]


def masks():
    on = torch.zeros(LAYERS, HEADS, dtype=torch.bool)
    on[1, 2] = on[2, 0] = True
    duo = Duo(torch.arange(6.0).reshape(LAYERS, 2), sink=2, recent=16)  # planned at each prompt's length
    return [None, PressMask(SnapKV(window=8, kernel=3), 0.25), HeadMask(on), PressMask(Knorm(), 0.5),
            PressMask(StreamingLLM(), 0.1), PressMask(duo, 0.3)]


@torch.no_grad()
def press_alone(model, shape, ids: list[int], mask: PressMask, at: int | None = None) -> list[int]:
    """The reference: the prompt alone, generated greedily inside the press's scope, compressed
    at ``at`` (none: the prompt's length)."""
    x = torch.tensor([ids])
    with intervene(model, hooks=[mask.hook(shape, len(ids) if at is None else at)]):
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), cache=GrowingCache(),
                             max_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def alone(model, shape, ids, mask):
    if isinstance(mask, PressMask):
        return press_alone(model, shape, ids, mask)
    return greedy_decode(model, IdsTokenizer(), ids, STOP, STEPS, mask=mask).ids


LEVERS = {"independent": Levers(prefix_reuse=False, batch_tokens=0), "reuse": Levers(batch_tokens=0),
          "batches": Levers(prefix_reuse=False), "defaults": Levers(), "chunks": Levers(batch_tokens=650),
          "prefill chunks": Levers(prefill_chunk=5)}


@pytest.mark.parametrize("levers", LEVERS.values(), ids=LEVERS.keys())
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_press_rows_equal_each_prompt_generated_alone_under_its_press(family, levers):
    """mistral: a sliding window of 8, so the cache keeps keys the window hides."""
    model = tiny_model(family=family, max_positions=512)
    shape, conditions, todo = ModelShape.of(model), masks(), jobs()
    scheduler = Scheduler(model, shape, STOP, STEPS, levers)
    rows = list(scheduler.run(todo, masks=conditions))
    assert sorted((r.job.key, r.mask) for r in rows) == sorted((j.key, i) for j in todo for i in range(6))
    got = {(r.job.key, r.mask): r.ids for r in rows}
    for r in rows:
        assert r.ids == alone(model, shape, r.job.prompt.ids, conditions[r.mask]), f"{r.job.key} under {r.mask}"
        assert (r.kept_keys is not None) == isinstance(conditions[r.mask], PressMask)
    changed = {m.press.name for i, m in enumerate(conditions)
               if isinstance(m, PressMask) and any(got[j.key, i] != got[j.key, 0] for j in todo)}
    # no vacuous pass: every press changes some answer (mistral's window of 8 is all SnapKV's window keeps)
    assert changed == ({"snapkv", "knorm", "streaming_llm", "duo"} if family == "llama" else {"knorm"}), changed
    assert scheduler.stats["press_tokens"] == 3 * 8  # SnapKV's window of 8, once per prompt for all presses
    if levers.prefix_reuse:
        assert scheduler.stats["prefilled_tokens"] < scheduler.stats["prompt_tokens"]


def test_kept_keys_are_the_budget_of_the_prompt():
    """Each press row reports the keys its keep sets hold: round(budget x kv x L) per layer
    for a press keeping exact totals, at most that for Duo."""
    model = tiny_model()
    shape, conditions = ModelShape.of(model), masks()
    rows = list(Scheduler(model, shape, STOP, 2, Levers()).run(jobs()[:1], masks=conditions))
    for r in rows:
        m = conditions[r.mask]
        if isinstance(m, PressMask):
            want = LAYERS * round(m.budget * shape.num_kv_heads * 300)
            assert r.kept_keys <= want if m.press.name == "duo" else r.kept_keys == want, m.press.name


def test_presses_share_the_first_decode_pass():
    on = torch.ones(LAYERS, HEADS, dtype=torch.bool)
    ms = [HeadMask(on, "zero"), PressMask(Knorm(), 0.5), None, HeadMask(on), HeadMask(on, phase="all")]
    assert [p.index for p in passes(ms)] == [[0, 1, 2], [3], [4]]


QUESTION = 12  # the prompts' last tokens: the question after the context


def context_jobs():
    return [Job(j.key, dataclasses.replace(j.prompt, context_end=len(j.prompt.ids) - QUESTION)) for j in jobs()]


@pytest.mark.parametrize("levers", [Levers(), Levers(prefix_reuse=False, batch_tokens=0), Levers(prefill_chunk=5)],
                         ids=["defaults", "independent", "prefill chunks"])
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_context_phase_press_rows_equal_each_prompt_generated_alone(family, levers):
    """Phase context: the context compressed at its end, the question run on it; each such row
    decodes alone on the shared cache, which the other rows then find plain again."""
    model = tiny_model(family=family, max_positions=512)
    shape, todo = ModelShape.of(model), context_jobs()
    conditions = [PressMask(SnapKV(window=8, kernel=3), 0.25, "context"), None, PressMask(Knorm(), 0.5),
                  PressMask(Knorm(), 0.3, "context"), HeadMask(masks()[2].heads)]
    rows = list(Scheduler(model, shape, STOP, STEPS, levers).run(todo, masks=conditions))
    assert sorted((r.job.key, r.mask) for r in rows) == sorted((j.key, i) for j in todo for i in range(5))
    got = {(r.job.key, r.mask): r.ids for r in rows}
    for r in rows:
        m = conditions[r.mask]
        at = r.job.prompt.context_end if isinstance(m, PressMask) and m.phase == "context" else len(r.job.prompt.ids)
        want = press_alone(model, shape, r.job.prompt.ids, m, at) if isinstance(m, PressMask) else \
            alone(model, shape, r.job.prompt.ids, m)
        assert r.ids == want, f"{r.job.key} under {r.mask}"
    changed = {i for i in (0, 3) if any(got[j.key, i] != got[j.key, 1] for j in todo)}
    assert changed == ({0, 3} if family == "llama" else {3})  # mistral's window of 8 is SnapKV's own
