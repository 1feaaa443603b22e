"""The engine against the specification: the scheduler's rows (prefix reuse and batched
decoding on, as detection and the masked test run it) equal ``core.reference``'s plain
trials exactly: the same answer ids and the same per-head retrieval scores."""

import pytest
import torch
from families import SUPPORTED, build
from helpers import one_thread

from retrieval_head.core.mask import HeadMask
from retrieval_head.core.reference import detection_trial, masked_trial
from retrieval_head.core.scoring import trial_scores
from retrieval_head.engine.scheduler import Job, Levers, Scheduler
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape

STEPS, LENGTH, AT = 5, 300, (262, 275, 290)  # insertion points past SharedPrefix's 256-token minimum
FAMILIES = ["Llama (GQA)", "Mistral", "Gemma2", "GPT-OSS"]  # GQA, sliding window, softcap, sink logits
MASKED = ["Llama (GQA)", "Mistral", "GPT-OSS"]  # (no mask changes the tiny Gemma2's greedy answers)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def jobs(vocab: int) -> list[Job]:
    """Three prompts of one length sharing a long prefix: reused, and decoded as one batch."""
    base = torch.randint(0, vocab, (LENGTH - 5,), generator=torch.Generator().manual_seed(4)).tolist()
    needle = [5, 6, 7, 8, 9]
    return [Job(at, Prompt(base[:at] + needle + base[at:], (at, at + 5), at, LENGTH - 5)) for at in AT]


def engine(model, masks, probe: bool):
    shape = ModelShape.of(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    scheduler = Scheduler(model, shape, torch.zeros(vocab, dtype=torch.bool), STEPS, Levers())
    rows = list(scheduler.run(jobs(vocab), masks=masks, probe=probe))
    assert scheduler.stats["prefilled_tokens"] < scheduler.stats["prompt_tokens"]  # prefix reuse on
    assert max(scheduler.stats["decode_batches"]) > 1  # batching on
    return rows, torch.zeros(vocab, dtype=torch.bool)


@pytest.mark.parametrize("name", FAMILIES)
def test_detection_rows_equal_the_reference_trial(name):
    model = build(next(f for f in SUPPORTED if f.name == name))
    rows, stop = engine(model, [None], probe=True)
    for r in rows:
        p = r.job.prompt
        trial = detection_trial(model, p.ids, p.needle_span, stop, STEPS)
        assert r.ids == trial.ids, f"prompt {r.job.key}"
        assert torch.equal(r.positions, trial.positions)  # where every head looked, step by step
        assert torch.equal(trial_scores(p.ids, p.needle_span, r.positions, r.ids), trial.scores)
    assert len(rows) == 3 and not torch.equal(rows[0].positions, rows[1].positions)  # not one row copied


@pytest.mark.parametrize("name", MASKED)
def test_masked_rows_equal_the_reference_trial(name):
    model = build(next(f for f in SUPPORTED if f.name == name))
    shape = ModelShape.of(model)
    heads = torch.tensor([[(l + h) % 3 != 0 for h in range(shape.num_heads)] for l in range(shape.num_layers)])
    masks = [None, HeadMask(heads), HeadMask(~heads, "zero"), HeadMask(heads, phase="all"),
             HeadMask(heads, "stream", "decode", 4, 8), HeadMask(heads, "stream", "all", 4, 8)]
    rows, stop = engine(model, masks, probe=False)
    answers = {}
    for r in rows:
        answers[r.job.key, r.mask] = masked_trial(model, r.job.prompt.ids, stop, STEPS, masks[r.mask])
        assert r.ids == answers[r.job.key, r.mask], f"prompt {r.job.key}, mask {r.mask}"
    assert len(rows) == 3 * len(masks)
    assert len(set(map(tuple, answers.values()))) > len(AT), "the masks changed no answer: the check is vacuous"


@pytest.mark.slow
def test_detect_on_the_default_model_equals_the_reference(default_model):
    """SmolLM2 on ~500-token prompts through ``detect`` (prefix reuse, batches): every
    trial's response ids and head scores are the reference trial's."""
    from retrieval_head.core.decode import stop_token_mask
    from retrieval_head.experiments.detect import DetectSettings, detect
    from retrieval_head.experiments.sweep import TrialKey, plan

    model, tok, _ = default_model
    st = DetectSettings(context_lengths=(500,), depth_percents=(60, 90))
    trials = plan(tok, ModelShape.of(model), st)
    result = detect(model, tok, st, progress=False, checked=trials)
    assert result.stats["prefilled_tokens"] < result.stats["prompt_tokens"]  # a prefix was reused
    stop = stop_token_mask(model, tok)
    copied = 0
    for t in result.trials:
        p = trials.prompt(TrialKey.of(t))
        trial = detection_trial(model, p.ids, p.needle_span, stop, st.max_new_tokens)
        assert t["response_ids"] == trial.ids
        assert t["head_scores"] == trial.scores.tolist()
        copied += int(trial.scores.ne(0).sum())
    assert copied > 0, "no head copied: the comparison is vacuous"
