"""The scheduling layer: every (job, mask) row it yields is what ``greedy_decode`` gives that
prompt under that mask alone (tokens, and the probe's argmax positions), whatever the levers;
and it never decodes more rows together than the budget of cached tokens allows."""

import pytest
import torch
from helpers import HEADS, LAYERS, IdsTokenizer, ids_of, one_thread, tiny_model

from retrieval_head.core.decode import greedy_decode
from retrieval_head.core.intervene import ArgmaxProbe, HeadMask
from retrieval_head.engine.scheduler import Job, Levers, Scheduler, passes
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape

STEPS = 6
NEEDLE = [7, 8, 9, 10, 11]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def heads(*pairs):
    m = torch.zeros(LAYERS, HEADS, dtype=torch.bool)
    for l, h in pairs:
        m[l, h] = True
    return m


def jobs(length=60, at=(10, 25, 40)):
    """Three prompts of one length: a needle at three insertion points of one text."""
    base = ids_of(length - len(NEEDLE), seed=5)[0].tolist()
    out = []
    for a in at:
        ids = base[:a] + NEEDLE + base[a:]
        out.append(Job(("cell", a), Prompt(ids, (a, a + len(NEEDLE)), a, len(base))))
    return out


def alone(model, job, mask, probe):
    seen = []
    gen = greedy_decode(model, IdsTokenizer(), job.prompt.ids, torch.zeros(128, dtype=torch.bool), STEPS, mask=mask,
                        probe=ArgmaxProbe() if probe else None,
                        on_step=(lambda t, tok, pos: seen.append(pos[:, 0].clone())) if probe else None)
    return gen.ids, (torch.stack(seen) if probe else None)


MASKS = {
    "none": [None],
    "decode masks": [None, HeadMask(heads((0, 1), (2, 3))), HeadMask(heads((1, 0)))],
    "mixed phases and modes": [HeadMask(heads((1, 2))), None, HeadMask(heads((0, 0), (2, 1)), phase="all"),
                               HeadMask(heads((2, 2)), "zero")],
}
LEVERS = {"independent": Levers(prefix_reuse=False, batch_tokens=0), "reuse": Levers(batch_tokens=0),
          "batches": Levers(prefix_reuse=False), "defaults": Levers(), "chunks": Levers(batch_tokens=650)}


@pytest.mark.parametrize("levers", LEVERS.values(), ids=LEVERS.keys())
@pytest.mark.parametrize("masks", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_rows_equal_each_prompt_decoded_alone(family, masks, levers):
    """mistral: prompts longer than its sliding window, so shared prefixes and stacked
    caches keep keys the window must hide."""
    model = tiny_model(family=family, max_positions=512)
    probe = masks == [None]  # detection: the probe; the masked test: masks only
    scheduler = Scheduler(model, ModelShape.of(model), torch.zeros(128, dtype=torch.bool), STEPS, levers)
    # insertion points past SharedPrefix's 256-token minimum, so the last two prompts reuse a prefix
    todo = jobs(300, at=(262, 275, 290))
    rows = list(scheduler.run(todo, masks=masks, probe=probe))
    assert sorted((r.job.key, r.mask) for r in rows) == sorted((j.key, i) for j in todo for i in range(len(masks)))
    answers = set()
    for r in rows:
        ids, pos = alone(model, r.job, masks[r.mask], probe)
        assert r.ids == ids, f"{r.job.key} under mask {r.mask}"
        if probe:
            assert torch.equal(r.positions, pos)
        answers.add(tuple(ids))
    assert len(answers) > 1  # the prompts (and masks) differ in their answers: not one row copied
    if levers.prefix_reuse:
        assert scheduler.stats["prefilled_tokens"] < scheduler.stats["prompt_tokens"]


@pytest.mark.parametrize("budget", [0, 59, 130, 200, 10_000])
def test_never_decodes_more_rows_than_the_budget_holds(budget):
    """Rows decoded together x prompt length <= batch_tokens (one row when even one does not fit)."""
    model = tiny_model()
    masks = [None, HeadMask(heads((0, 1))), HeadMask(heads((1, 1))), HeadMask(heads((2, 1)))]
    scheduler = Scheduler(model, ModelShape.of(model), torch.zeros(128, dtype=torch.bool), STEPS,
                          Levers(batch_tokens=budget))
    rows = list(scheduler.run(jobs(), masks=masks))
    assert len(rows) == 12
    biggest = max(scheduler.stats["decode_batches"])
    assert biggest == max(1, min(12, budget // 60)), scheduler.stats["decode_batches"]


def test_passes_share_the_prefill_only_where_the_masks_allow():
    on = heads((0, 0))
    masks = [None, HeadMask(on, "zero"), HeadMask(on, phase="all"), HeadMask(on), HeadMask(on, "zero", "all")]
    got = [(p.index, p.prefill_mask is not None) for p in passes(masks)]
    assert got == [([0, 1], False), ([3], False), ([2], True), ([4], True)]
