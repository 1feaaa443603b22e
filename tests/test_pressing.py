"""A press's masked simulation is exact: on every family of the matrix, phases decode and
context, a batch of 2 rows (row 0 left-padded; in phase context the rows' questions differ
in length, so each row has its own compression point), ``model.generate`` inside
``intervene(model, hooks=[PressHeads(...)])`` gives, token for token and logits within 1e-4,
what plain eager attention gives over the keys the press keeps (``press_oracle``: one full
forward per step, no cache, no hook, the press asked on the oracle's own keys and queries).

Every compared case changes the answer (no vacuous pass), the comparison fails with the
compression turned off, a press keeping every key changes nothing, a chunked prefill
compresses where the point falls (the press's window of queries spanning chunks), and a
streaming mask's keep set applied as a press is the stream hook itself (one rule).
"""

from __future__ import annotations

import pytest
import torch
from families import SUPPORTED, build, matrix
from helpers import one_thread
from press_oracle import (
    AT,
    BUDGET,
    LENGTH,
    PRESSES,
    START,
    STEPS,
    KeepAll,
    SinkRecentPress,
    SnapPress,
    assert_same,
    batch,
    changed_case,
    oracle_answer,
)

from retrieval_head.core.decode import cache_kwarg
from retrieval_head.core.intervene import HeadMask, intervene
from retrieval_head.core.kvcache import GrowingCache
from retrieval_head.core.pressing import PressHeads
from retrieval_head.models.shape import ModelShape

LLAMA = next(f for f in SUPPORTED if f.name == "Llama (GQA)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def press_hook(model, press, phase: str) -> PressHeads:
    return PressHeads(press, press.layer_shares(ModelShape.of(model), BUDGET), AT[phase], START)


@torch.no_grad()
def simulated(model, inputs: dict, hook=None):
    """``model.generate`` on a cache that keeps every key, inside ``hook``'s scope (None:
    none): (tokens, logits)."""
    with intervene(model, hooks=[] if hook is None else [hook]):
        out = model.generate(**inputs, cache=GrowingCache(), max_new_tokens=STEPS, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, LENGTH:], torch.stack(out.logits)


@pytest.mark.parametrize("press", sorted(PRESSES))
@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_a_press_equals_the_eager_oracle(fam, phase, press):
    model, inputs, want = changed_case(fam, PRESSES[press], phase)
    assert_same(simulated(model, inputs, press_hook(model, PRESSES[press], phase)), want)


@pytest.mark.parametrize("phase", ["decode", "context"])
def test_the_comparison_fails_with_the_compression_off(phase, monkeypatch):
    """The press still asked, nothing hidden: the answer is no longer the oracle's."""
    model, inputs, want = changed_case(LLAMA, SnapPress(), phase)
    monkeypatch.setattr(PressHeads, "sees", lambda self, call, qpos, kpos: torch.ones(1, 1, len(qpos), len(kpos),
                                                                                      dtype=torch.bool))
    with pytest.raises(AssertionError):
        assert_same(simulated(model, inputs, press_hook(model, SnapPress(), phase)), want)


@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("name", ["Llama (GQA)", "Gemma2"])
def test_a_press_keeping_every_key_changes_nothing(name, phase):
    model = build(next(f for f in SUPPORTED if f.name == name))
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    got, plain = simulated(model, inputs, press_hook(model, KeepAll(), phase)), simulated(model, inputs)
    assert torch.equal(got[0], plain[0])
    torch.testing.assert_close(got[1], plain[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("phase, at, chunk", [("decode", LENGTH, 7), ("context", 29, 7), ("context", 29, 5)])
@pytest.mark.parametrize("name", ["Llama (GQA)", "Mistral"])
@torch.no_grad()
def test_a_chunked_prefill_compresses_where_the_point_falls(name, phase, at, chunk):
    """A prefill in chunks, one row: the press's 6 queries before ``at`` span two chunks, and
    the chunk covering ``at - 1`` holds rows on both sides of it (context phase)."""
    model = build(next(f for f in SUPPORTED if f.name == name))
    ids = batch(model.get_output_embeddings().weight.shape[0])["input_ids"][1:]
    press = SnapPress(window=6)
    point, start = torch.tensor([at]), torch.tensor([0])
    want = oracle_answer(model, dict(input_ids=ids, attention_mask=torch.ones_like(ids)), press, at=point, start=start)
    hook = PressHeads(press, press.layer_shares(ModelShape.of(model), BUDGET), at)
    kw = {cache_kwarg(model): GrowingCache(), "use_cache": True}
    tokens, logits = [], []
    with intervene(model, hooks=[hook]):
        for i in range(0, LENGTH, chunk):
            last = model(input_ids=ids[:, i:i + chunk], **kw).logits[:, -1]
        for _ in range(STEPS):
            logits.append(last)
            tokens.append(last.argmax(-1))
            last = model(input_ids=tokens[-1][:, None], **kw).logits[:, -1]
    assert sorted(hook.done) == [0, 1, 2] and not hook.recent_q  # every layer compressed once, no query held
    assert_same((torch.stack(tokens, 1), torch.stack(logits)), want)
    assert not torch.equal(want[0], oracle_answer(model, dict(input_ids=ids, attention_mask=torch.ones_like(ids)))[0])


@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("name", ["Llama (GQA)", "Mistral", "Gemma2"])
def test_a_streaming_keep_set_is_the_stream_hook(name, phase):
    """Streamed KV heads keeping their sink and recent keys, as a press, decode as the
    streaming mask (``stream.StreamHeads``) of the same heads: the visible-keys rule is one."""
    model = build(next(f for f in SUPPORTED if f.name == name))
    shape = ModelShape.of(model)
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    streamed = torch.tensor([[(layer + k) % 2 == 0 for k in range(shape.num_kv_heads)]
                             for layer in range(shape.num_layers)])
    press = SinkRecentPress(streamed=streamed, sink=4, recent=8)
    mask = HeadMask(streamed.repeat_interleave(shape.group, dim=1), "stream", phase, press.sink, press.recent)
    got = simulated(model, inputs, press_hook(model, press, phase))
    want = simulated(model, inputs, mask.hook(AT[phase], START))
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-4)
    assert float((got[1] - simulated(model, inputs)[1]).abs().max()) > 1e-3, "streaming changed nothing: vacuous"
