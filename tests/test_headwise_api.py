"""The head-wise cache's public calls, as docs/api.md and docs/compression.md show them.

Two calls run a model on a ``HeadwiseCache``: ``retrieval_head.headwise_generate(model, cache,
...)``, and ``model.generate(cache=cache, ...)`` inside ``with intervene(model,
hooks=[HeadwiseAttention()])`` after ``cache.pad_left(attention_mask)``. Known answers: with
every KV head full both give exactly the tokens of transformers' own ``generate`` (its own
cache), greedy and sampled with ``num_return_sequences``; with streamed heads the two calls
give the same tokens and logits (``headwise_generate`` is held to the masked simulation in
tests/test_headwise.py), and ``num_return_sequences`` copies of a prompt sampled with
``top_k=1`` are its greedy answer. Every refusal is one line naming only what
``retrieval_head`` exports.
"""

from __future__ import annotations

import re

import pytest
import torch
from families import FAMILIES, SUPPORTED, build, matrix
from helpers import one_thread

import retrieval_head
from retrieval_head import HeadwiseAttention, HeadwiseCache, ModelShape, UserError, headwise_generate, intervene

SINK, RECENT, STEPS, LENGTH, PAD = 4, 8, 5, 40, 7
LLAMA = next(f for f in FAMILIES if f.name == "Llama (GQA)")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def batch(model) -> dict:
    """Two rows, the second left-padded by PAD tokens (id 0, masked); greedy."""
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(1, vocab, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    ids[1, :PAD], mask[1, :PAD] = 0, 0
    return dict(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False, pad_token_id=0)


def every_kv_head(shape: ModelShape) -> torch.Tensor:
    return torch.ones(shape.num_layers, shape.num_kv_heads, dtype=torch.bool)


def some_kv_heads(shape: ModelShape) -> torch.Tensor:
    """Every other KV head full, a different pattern per layer (MQA layers: all or none)."""
    return torch.tensor([[(layer + k) % 2 == 0 for k in range(shape.num_kv_heads)]
                         for layer in range(shape.num_layers)])


@torch.no_grad()
def both_calls(model, make_cache, inputs: dict, seed: int = 0) -> tuple:
    """The outputs of the two documented calls, each on a fresh cache, each after ``manual_seed(seed)``."""
    torch.manual_seed(seed)
    one = headwise_generate(model, make_cache(), **inputs)
    cache = make_cache()
    copies = inputs.get("num_return_sequences", 1)
    cache.pad_left(inputs["attention_mask"].repeat_interleave(copies, dim=0))
    torch.manual_seed(seed)
    with intervene(model, hooks=[HeadwiseAttention()]):
        two = model.generate(cache=cache, **inputs)
    return one, two


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_with_every_kv_head_full_both_calls_give_transformers_greedy_tokens(fam):
    model = build(fam)
    shape, inputs = ModelShape.of(model), batch(model)
    with torch.no_grad():
        want = model.generate(**inputs)  # transformers' own cache
    for got in both_calls(model, lambda: HeadwiseCache(shape, every_kv_head(shape), SINK, RECENT), inputs):
        assert torch.equal(got, want)


@pytest.mark.parametrize("phase", ["decode", "all"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_with_streamed_heads_both_calls_agree(fam, phase):
    model = build(fam)
    shape = ModelShape.of(model)
    inputs = dict(batch(model), output_logits=True, return_dict_in_generate=True)
    one, two = both_calls(model, lambda: HeadwiseCache(shape, some_kv_heads(shape), SINK, RECENT, phase), inputs)
    assert torch.equal(one.sequences, two.sequences)
    assert torch.equal(torch.stack(one.logits), torch.stack(two.logits))


def test_num_return_sequences_with_every_kv_head_full_samples_what_plain_generate_samples():
    model = build(LLAMA)
    shape = ModelShape.of(model)
    inputs = dict(batch(model), do_sample=True, num_return_sequences=2)
    torch.manual_seed(0)
    with torch.no_grad():
        want = model.generate(**inputs)
    assert want.shape[0] == 4 and not torch.equal(want[0], want[1])  # really two samples per prompt
    for got in both_calls(model, lambda: HeadwiseCache(shape, every_kv_head(shape), SINK, RECENT), inputs):
        assert torch.equal(got, want)


@pytest.mark.parametrize("phase", ["decode", "all"])
def test_num_return_sequences_with_streamed_heads_repeats_each_prompts_rows(phase):
    """``top_k=1`` sampling is greedy: each of a prompt's copies is its greedy answer, so each
    left-padded copy has its own row's padding (``pad_left`` of the repeated mask)."""
    model = build(LLAMA)
    shape = ModelShape.of(model)
    make = lambda: HeadwiseCache(shape, some_kv_heads(shape), SINK, RECENT, phase)
    with torch.no_grad():
        greedy = headwise_generate(model, make(), **batch(model))
    inputs = dict(batch(model), do_sample=True, top_k=1, num_return_sequences=2)
    for got in both_calls(model, make, inputs):
        assert torch.equal(got, greedy.repeat_interleave(2, dim=0))


def messages() -> dict[str, str]:
    """Every refusal of the head-wise API, by what was tried."""
    model = build(LLAMA)
    shape = ModelShape.of(model)
    fresh = lambda: HeadwiseCache(shape, some_kv_heads(shape), SINK, RECENT)
    ids = torch.tensor([[1, 2, 3]])
    tried = {
        "model.generate outside the scope": lambda: model.generate(input_ids=ids, cache=fresh(), max_new_tokens=2),
        "a backend's transpose (flash)": lambda: fresh().update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4),
                                                                0)[0].transpose(1, 2),
        "a plain cache": lambda: headwise_generate(model, object(), input_ids=ids),
        "beam search": lambda: headwise_generate(model, fresh(), input_ids=ids, num_beams=2),
        "crop": lambda: fresh().crop(-1),
        "reorder": lambda: fresh().reorder_cache(torch.tensor([0])),
    }

    def filled():
        cache = fresh()
        with torch.no_grad(), intervene(model, hooks=[HeadwiseAttention()]):
            model(input_ids=ids, cache=cache)
        return cache

    tried["copies of a filled cache"] = lambda: headwise_generate(model, filled(), input_ids=ids, do_sample=True,
                                                                  num_return_sequences=2)
    tried["another batch on a filled cache"] = lambda: filled().update(torch.ones(2, 2, 1, 4),
                                                                       torch.ones(2, 2, 1, 4), 0)

    def padding_of_fewer_rows():
        cache = fresh()
        cache.pad_left(torch.tensor([[1, 1, 1], [0, 1, 1]]))
        with torch.no_grad(), intervene(model, hooks=[HeadwiseAttention()]):
            model.generate(input_ids=torch.tensor([[1, 2, 3], [0, 2, 3]]), attention_mask=torch.tensor(
                [[1, 1, 1], [0, 1, 1]]), cache=cache, do_sample=True, num_return_sequences=2, max_new_tokens=2)

    tried["padding of fewer rows"] = padding_of_fewer_rows
    out = {}
    for what, attempt in tried.items():
        with pytest.raises(UserError) as e:
            attempt()
        out[what] = str(e.value)
    return out


def test_every_refusal_is_one_line_naming_only_what_retrieval_head_exports():
    msgs = messages()
    assert "retrieval_head.headwise_generate(model, cache, ...)" in msgs["model.generate outside the scope"]
    assert msgs["a backend's transpose (flash)"] == msgs["model.generate outside the scope"]
    assert "fresh head-wise cache" in msgs["copies of a filled cache"]
    assert "repeat_interleave(num_return_sequences" in msgs["padding of fewer rows"]
    callable_here = set(dir(HeadwiseCache)) | set(dir(torch.Tensor))
    for what, msg in msgs.items():
        assert "\n" not in msg, what
        for name in re.findall(r"retrieval_head\.([A-Za-z_]\w*)", msg):
            assert hasattr(retrieval_head, name), f"{what}: retrieval_head.{name} is not importable: {msg}"
        for called in re.findall(r"([A-Za-z_][\w.]*)\(", msg):  # each call shown: exported, or a method
            name = called.removeprefix("retrieval_head.")
            ok = hasattr(retrieval_head, name) if name != called else called.split(".")[-1] in callable_here
            assert ok, f"{what}: {called}(...) names nothing importable: {msg}"
