"""The pressed cache (``pressed.PressedCache``: each KV head really holds only the keys a press
keeps) computes what the press's masked simulation computes (``PressHeads`` on a cache that
keeps every key, tests/test_pressing.py: itself equal to an eager oracle): on every family of
the matrix, phases decode and context, a left-padded batch of 2 (in phase context each row has
its own compression point), for every press of ``retrieval_head.presses`` (headkv with a given
scores tensor, duo with a given ranking), the same greedy tokens and logits within 1e-4; and it
holds the bytes ``keep.pressed_bytes`` predicts from the simulation's own keep sets, padding
included. Every compared case changes the answer (no vacuous pass), the comparison fails with
the real compression turned off, a press keeping every key is the plain cache bit for bit, a
left-padded row decodes as it would alone, a chunked prefill compresses where the point falls.
"""

from __future__ import annotations

import pytest
import torch
from families import SUPPORTED, build, matrix
from helpers import one_thread
from press_oracle import AT, BUDGET, LENGTH, PAD, START, STEPS, KeepAll, batch

from retrieval_head.core.headwise_attend import generate
from retrieval_head.core.intervene import intervene
from retrieval_head.core.keep import drops_keys, pressed_bytes
from retrieval_head.core.kvcache import GrowingCache
from retrieval_head.core.pressed import PressedCache, PressedLayer
from retrieval_head.core.pressing import PressHeads
from retrieval_head.errors import UserError
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.registry import make_press

PRESSES = ("streaming_llm", "snapkv", "knorm", "adakv", "pyramidkv", "headkv", "duo")
PARAMS = {"snapkv": dict(window=8), "pyramidkv": dict(window=8), "headkv": dict(window=8, beta=1.05),
          "duo": dict(sink=2, recent=6, length=LENGTH)}  # windows of queries shorter than the prompt
BUDGETS = {"duo": 0.4}  # a whole KV head full beside the streamed ones: heads of 40 and 8 keys
SETTINGS = dict(max_new_tokens=STEPS, do_sample=False, pad_token_id=0, output_logits=True,
                return_dict_in_generate=True)
LLAMA = next(f for f in SUPPORTED if f.name == "Llama (GQA)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def make(name: str, shape: ModelShape):
    """The press ``name``; headkv's head scores and duo's ranking a fixed random tensor."""
    scores = torch.rand(shape.num_layers, shape.num_kv_heads, generator=torch.Generator().manual_seed(1))
    return make_press(name, shape, scores if name in ("headkv", "duo") else None, **PARAMS.get(name, {}))


def answer(out, prompt: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    return out.sequences[:, prompt:], torch.stack(out.logits)


@torch.no_grad()
def simulated(model, inputs: dict, press=None, phase: str = "decode", budget: float = BUDGET):
    """``model.generate`` on a cache that keeps every key, the press simulated (None: no
    compression): ((tokens, logits), the hook)."""
    hook = None if press is None else PressHeads(press, press.layer_shares(ModelShape.of(model), budget),
                                                 AT[phase], START)
    with intervene(model, hooks=[] if hook is None else [hook]):
        return answer(model.generate(**inputs, cache=GrowingCache(), **SETTINGS)), hook


@torch.no_grad()
def real(model, inputs: dict, press, phase: str, budget: float = BUDGET, **kwargs):
    """The same on a ``PressedCache``: ((tokens, logits), the cache)."""
    cache = PressedCache(ModelShape.of(model), press, budget, phase, AT[phase] if phase == "context" else None)
    return answer(generate(model, cache, **inputs, **SETTINGS, **kwargs)), cache


def changed_case(fam, name: str, phase: str):
    """The first model and prompt of a small grid of seeds whose answer the press changes:
    (model, inputs, press, simulated answer, its hook)."""
    for seed in range(3):
        model = build(fam, seed=seed)
        press = make(name, ModelShape.of(model))
        for prompt in range(3):
            inputs = batch(model.get_output_embeddings().weight.shape[0], prompt)
            want, hook = simulated(model, inputs, press, phase, BUDGETS.get(name, BUDGET))
            if not torch.equal(want[0], simulated(model, inputs)[0][0]):
                return model, inputs, press, want, hook
    pytest.fail("the press changed no answer token on any seed: the comparison would be vacuous")


def assert_same(got, want) -> None:
    assert torch.equal(got[0], want[0]), f"tokens {got[0].tolist()} != the simulation's {want[0].tolist()}"
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-4)


def itemsize(model) -> int:
    return next(model.parameters()).element_size()


@pytest.mark.parametrize("name", PRESSES)
@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_the_real_cache_equals_the_press_simulation_and_holds_the_predicted_bytes(fam, phase, name):
    model, inputs, press, want, hook = changed_case(fam, name, phase)
    got, cache = real(model, inputs, press, phase, BUDGETS.get(name, BUDGET))
    assert_same(got, want)
    shape, length = ModelShape.of(model), cache.get_seq_length()
    kept = [hook.kept[i] for i in range(shape.num_layers)]  # the simulation's keep sets, not the cache's
    assert all(torch.equal(a, b) for a, b in zip(cache.kept(), kept))
    assert any(drops_keys(k, START) for k in kept)
    held = pressed_bytes(kept, length, shape.head_dim, itemsize(model), START)
    assert cache.nbytes() == held < 2 * 2 * shape.num_layers * shape.num_kv_heads * length * shape.head_dim * 4


@pytest.mark.parametrize("phase", ["decode", "context"])
def test_the_comparison_fails_with_the_real_compression_off(phase, monkeypatch):
    """Every layer keeps every key after its compression point (the press still asked, the
    prefill's rows still under the simulation): the answer is no longer the simulation's."""
    model, inputs, press, want, _ = changed_case(LLAMA, "snapkv", phase)
    monkeypatch.setattr(PressedLayer, "compress", lambda self: None)
    got, cache = real(model, inputs, press, phase)
    assert all(layer.groups is None for layer in cache.layers)  # nothing dropped
    with pytest.raises(AssertionError):
        assert_same(got, want)


@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_a_press_keeping_every_key_is_the_plain_cache_bit_for_bit(fam, phase):
    model = build(fam)
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    got, cache = real(model, inputs, KeepAll(), phase)
    with torch.no_grad():
        want = answer(model.generate(**inputs, cache=GrowingCache(), **SETTINGS))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    shape = ModelShape.of(model)
    assert cache.nbytes() == pressed_bytes(cache.kept(), cache.get_seq_length(), shape.head_dim, 4, START) \
        == 2 * 2 * shape.num_layers * shape.num_kv_heads * cache.get_seq_length() * shape.head_dim * 4


@pytest.mark.parametrize("name", ["adakv", "headkv", "duo"])
@pytest.mark.parametrize("fam", matrix([f for f in SUPPORTED if ModelShape.from_config(f.config(8)).num_kv_heads > 1]))
def test_heads_hold_different_numbers_of_keys(fam, name):
    """Each KV head of each row holds its own number of keys: the layers split their heads
    into groups of similar lengths, holding fewer bytes than one tensor padded to the longest
    head (and never fewer than the keys kept)."""
    model, inputs, press, want, hook = changed_case(fam, name, "decode")
    got, cache = real(model, inputs, press, "decode", BUDGETS.get(name, BUDGET))
    assert_same(got, want)
    shape, length, size = ModelShape.of(model), cache.get_seq_length(), itemsize(model)
    kept = cache.kept()
    counts = [k.sum(-1) for k in kept]  # [b, kv] per layer
    assert any(bool((c.amax(-1) > c.amin(-1)).any()) for c in counts), "a row's heads all keep alike: vacuous"
    exact = sum(int(c.sum()) + c.numel() * (length - LENGTH) for c in counts) * 2 * shape.head_dim * size
    one = pressed_bytes(kept, length, shape.head_dim, size, START, most=1)
    assert exact <= cache.nbytes() == pressed_bytes(kept, length, shape.head_dim, size, START) <= one
    if name != "adakv":  # adakv's heads keep about alike; headkv's and duo's do not
        assert cache.nbytes() < one and any(len(layer.groups) > 1 for layer in cache.layers)


@pytest.mark.parametrize("name", ["snapkv", "headkv"])
@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_a_left_padded_row_decodes_as_it_would_alone(fam, phase, name):
    """Row 0 (PAD pads): its pads are never kept nor counted, so it keeps and answers as alone."""
    model = build(fam)
    press = make(name, ModelShape.of(model))
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    got, _ = real(model, inputs, press, phase)
    alone = {k: v[:1, PAD:] for k, v in inputs.items()}
    cache = PressedCache(ModelShape.of(model), press, BUDGET, phase,
                         int(AT[phase][0]) - PAD if phase == "context" else None)
    with torch.no_grad():
        want = answer(generate(model, cache, **alone, **SETTINGS), LENGTH - PAD)
    assert torch.equal(got[0][:1], want[0])
    torch.testing.assert_close(got[1][:, :1], want[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("phase", ["decode", "context"])
@pytest.mark.parametrize("name", ["Llama (GQA)", "Mistral"])
def test_a_chunked_prefill_compresses_where_the_point_falls(name, phase):
    """Chunks of 7: the press's 8 queries before the point span two chunks, and in phase
    context the chunk covering each row's point holds rows on both sides of it; a layer holds
    every key only until its point."""
    model, inputs, press, want, hook = changed_case(next(f for f in SUPPORTED if f.name == name), "snapkv", phase)
    got, cache = real(model, inputs, press, phase, prefill_chunk_size=7)
    assert_same(got, want)
    shape = ModelShape.of(model)
    kept = [hook.kept[i] for i in range(shape.num_layers)]
    assert cache.nbytes() == pressed_bytes(kept, cache.get_seq_length(), shape.head_dim, 4, START)


def test_what_a_pressed_cache_cannot_do_is_refused():
    model = build(LLAMA)
    shape = ModelShape.of(model)
    press = make("snapkv", shape)
    with pytest.raises(UserError, match="phase decode or context"):
        PressedCache(shape, press, BUDGET, "all")
    with pytest.raises(UserError, match="context_length"):
        PressedCache(shape, press, BUDGET, "context")
    cache = PressedCache(shape, press, BUDGET)
    with pytest.raises(UserError, match="not compressed yet"):
        cache.kept()
    with torch.no_grad(), pytest.raises(UserError, match="HeadwiseAttention"):
        model(input_ids=torch.tensor([[1, 2, 3]]), cache=cache, use_cache=True)
    for op in (lambda: cache.crop(-1), lambda: cache.reorder_cache(torch.tensor([0])),
               lambda: cache.batch_select_indices(torch.tensor([0])), lambda: cache.offload(0)):
        with pytest.raises(UserError, match="pressed cache cannot"):
            op()
