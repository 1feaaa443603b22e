"""The head-wise KV cache computes what the masked simulation computes, and holds what its
keep set predicts: on every family of the matrix, each phase, a batch of 2 rows with left
padding, ``model.generate`` with a ``HeadwiseCache`` gives the greedy tokens of a plain cache
under ``HeadMask(heads, "stream", phase)`` and its logits within float tolerance; with
every KV head full, the tokens and logits of a plain cache bit for bit. A keep set of query
heads that splits KV heads (some query heads kept, some streamed on a full KV head) gives the
masked simulation's answers on those very query heads. The cache's tensor bytes equal
``keep.cache_bytes`` exactly. What it cannot do is refused before any work."""

from __future__ import annotations

import json

import pytest
import torch
from families import FAMILIES, SUPPORTED, build, matrix
from helpers import one_thread, save_tiny_llama
from transformers import AutoModelForCausalLM

from retrieval_head.cli import commands
from retrieval_head.core.headwise import HeadwiseCache
from retrieval_head.core.headwise_attend import HeadwiseAttention, generate
from retrieval_head.core.intervene import HeadMask, intervene
from retrieval_head.core.keep import cache_bytes, keep_top, mixed_heads, stored
from retrieval_head.core.kvcache import GrowingCache
from retrieval_head.core.stream import full_kv_heads
from retrieval_head.errors import UserError
from retrieval_head.models.shape import ModelShape

SINK, RECENT, STEPS, LENGTH, PAD, CONTEXT = 4, 8, 5, 40, 7, 30  # windows are 16: sinks fall outside them
AT = {"decode": LENGTH, "all": None, "context": CONTEXT}  # where each phase compresses once
START = torch.tensor([0, PAD])  # each row's first real token: its sink starts there


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def batch(vocab: int) -> dict:
    """Two rows, the second left-padded by PAD tokens (id 0, masked)."""
    ids = torch.randint(1, vocab, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    ids[1, :PAD], mask[1, :PAD] = 0, 0
    return dict(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False, pad_token_id=0,
                output_logits=True, return_dict_in_generate=True)


def mixed_keep(shape: ModelShape) -> torch.Tensor:
    """Every other KV head full (a different pattern per layer): every layer mixes the groups
    where it has 2 KV heads; MQA layers alternate between all full and all streamed."""
    return torch.tensor([[(layer + k) % 2 == 0 for k in range(shape.num_kv_heads)]
                         for layer in range(shape.num_layers)])


def mixed_query_keep(shape: ModelShape) -> torch.Tensor:
    """Query heads kept, bool ``[layers, heads]``: head h of layer l when ``(h + l) % 3 == 0``.
    With 4 heads on 2 KV heads: layer 0 keeps one query head of each KV head (every KV head
    full, each with a streamed query head), layers 1 and 2 one KV head mixed, one streamed;
    with 1 KV head every layer mixes."""
    return torch.tensor([[(h + layer) % 3 == 0 for h in range(shape.num_heads)] for layer in range(shape.num_layers)])


@torch.no_grad()
def plain(model, inputs: dict, mask: HeadMask | None = None, at: int | None = None):
    if mask is None:
        return model.generate(cache=GrowingCache(), **inputs)
    start = inputs["attention_mask"].argmax(-1)  # the masked simulation's per-row sinks, as pad_left's
    with intervene(model, hooks=[mask.hook(at, start)]):
        return model.generate(cache=GrowingCache(), **inputs)


def logits(out) -> torch.Tensor:
    return torch.stack(out.logits)


def run_headwise(fam, phase: str, make_keep):
    """Build ``fam``'s tiny model and greedy-decode the left-padded batch on a head-wise cache
    whose keep set is ``make_keep(shape)``: (model, shape, inputs, keep, cache, output)."""
    model = build(fam)
    shape = ModelShape.of(model)
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    keep = make_keep(shape)
    cache = HeadwiseCache(shape, keep, SINK, RECENT, phase, CONTEXT if phase == "context" else None)
    with torch.no_grad():
        got = generate(model, cache, **inputs)
    return model, shape, inputs, keep, cache, got


@pytest.mark.parametrize("phase", ["decode", "all", "context"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_headwise_equals_the_masked_simulation(fam, phase):
    model, shape, inputs, keep, cache, got = run_headwise(fam, phase, mixed_keep)
    streamed = (~keep).repeat_interleave(shape.group, dim=1)
    want = plain(model, inputs, HeadMask(streamed, "stream", phase, SINK, RECENT), AT[phase])
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(logits(got), logits(want), rtol=1e-4, atol=1e-4)
    moved = float((logits(got) - logits(plain(model, inputs))).abs().max())
    assert moved > 1e-3, "streaming changed no logit: the check is vacuous"
    length = cache.get_seq_length()
    assert length == LENGTH + STEPS - 1
    itemsize = next(model.parameters()).element_size()
    assert cache.nbytes() == cache_bytes(shape, keep, 2, length, itemsize, SINK, RECENT, AT[phase], START)
    assert cache.nbytes() < cache_bytes(shape, None, 2, length, itemsize)
    assert model.config._attn_implementation == build(fam).config._attn_implementation  # left as before


@pytest.mark.parametrize("phase", ["decode", "all", "context"])
@pytest.mark.parametrize("fam", matrix([f for f in SUPPORTED if "GQA" in f.features]))  # MHA cannot split a KV head
def test_a_keep_set_of_query_heads_equals_the_masked_simulation_of_those_heads(fam, phase):
    """Query heads streamed on a full KV head see only their sink and recent keys: the
    answer is the simulation's with the same query heads streamed, not that of their KV
    heads' keep set (which the memory is: ``full_kv_heads``)."""
    model, shape, inputs, keep, cache, got = run_headwise(fam, phase, mixed_query_keep)
    assert bool(mixed_heads(shape, keep).any()), "no KV head serves kept and streamed query heads: vacuous"
    want = plain(model, inputs, HeadMask(~keep, "stream", phase, SINK, RECENT), AT[phase])
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(logits(got), logits(want), rtol=1e-4, atol=1e-4)
    *_, whole = run_headwise(fam, phase, lambda s: full_kv_heads(s, mixed_query_keep(s)))  # mixed heads not streamed
    moved = float((logits(got) - logits(whole)).abs().max())
    assert moved > 1e-3, "streaming the mixed query heads changed no logit: the check is vacuous"
    itemsize = next(model.parameters()).element_size()
    want_bytes = cache_bytes(shape, keep, 2, cache.get_seq_length(), itemsize, SINK, RECENT, AT[phase])
    assert cache.nbytes() == want_bytes == cache_bytes(shape, full_kv_heads(shape, keep), 2, cache.get_seq_length(),
                                                       itemsize, SINK, RECENT, AT[phase])
    assert cache.keep.tolist() == full_kv_heads(shape, keep).tolist()


@pytest.mark.parametrize("phase", ["decode", "all", "context"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_every_head_full_is_a_plain_cache_bit_for_bit(fam, phase):
    model, shape, inputs, _, cache, got = run_headwise(
        fam, phase, lambda shape: torch.ones(shape.num_layers, shape.num_kv_heads, dtype=torch.bool))
    want = plain(model, inputs)
    assert torch.equal(got.sequences, want.sequences) and torch.equal(logits(got), logits(want))
    assert cache.nbytes() == cache_bytes(shape, None, 2, cache.get_seq_length(), 4)


@pytest.mark.parametrize("phase", ["decode", "all"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_a_left_padded_row_decodes_as_it_would_alone(fam, phase):
    """Per-row sinks: the padded row's sink is its own first tokens, not its pads, so it
    gives the tokens (and logits, within float tolerance) of the same prompt unpadded."""
    model, shape, inputs, keep, _, got = run_headwise(fam, phase, mixed_keep)
    alone = {**inputs, "input_ids": inputs["input_ids"][1:, PAD:], "attention_mask": inputs["attention_mask"][1:, PAD:]}
    cache = HeadwiseCache(shape, keep, SINK, RECENT, phase)
    with torch.no_grad():
        want = generate(model, cache, **alone)
    assert torch.equal(got.sequences[1, PAD:], want.sequences[0])
    torch.testing.assert_close(logits(got)[:, 1], logits(want)[:, 0], rtol=1e-4, atol=1e-4)


def test_pad_left_takes_left_padding_only():
    shape = ModelShape.of(build(next(f for f in FAMILIES if f.name == "Llama (GQA)")))
    cache = HeadwiseCache(shape, mixed_keep(shape), SINK, RECENT, "all")
    with pytest.raises(UserError, match="left padding only"):
        cache.pad_left(torch.tensor([[1, 1, 0], [1, 1, 1]]))


def test_context_phase_at_the_prompt_end_is_the_decode_phase():
    """The masked simulation: phase context compressed at the prompt's end is phase decode."""
    model = build(next(f for f in FAMILIES if f.name == "Llama (GQA)"))
    shape = ModelShape.of(model)
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    streamed = (~mixed_keep(shape)).repeat_interleave(shape.group, dim=1)
    a = plain(model, inputs, HeadMask(streamed, "stream", "context", SINK, RECENT), LENGTH)
    b = plain(model, inputs, HeadMask(streamed, "stream", "decode", SINK, RECENT), LENGTH)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(logits(a), logits(b))


def test_phase_all_never_holds_more_than_sink_and_recent_in_a_chunked_prefill():
    """A prefill in chunks of 8: between calls every streamed head holds its sink and the
    keys before the next query, never the prompt; the answer is the masked simulation's."""
    model = build(next(f for f in FAMILIES if f.name == "Llama (GQA)"))
    shape = ModelShape.of(model)
    ids = batch(model.get_output_embeddings().weight.shape[0])["input_ids"][:1]
    keep = mixed_keep(shape)
    cache = HeadwiseCache(shape, keep, SINK, RECENT, "all")
    with torch.no_grad(), intervene(model, hooks=[HeadwiseAttention()]):
        for i in range(0, LENGTH, 8):
            out = model(input_ids=ids[:, i : i + 8], cache=cache, use_cache=True)
            for layer in cache.layers:
                assert layer.stream_keys.shape[2] == stored(i + 8, SINK, RECENT, None, None) <= SINK + RECENT
    streamed = (~keep).repeat_interleave(shape.group, dim=1)
    with torch.no_grad(), intervene(model, hooks=[HeadMask(streamed, "stream", "all", SINK, RECENT).hook()]):
        want = model(input_ids=ids, use_cache=False).logits[:, -1]
    torch.testing.assert_close(out.logits[:, -1], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make_keep", [mixed_keep, mixed_query_keep], ids=["kv", "query"])
@pytest.mark.parametrize("phase", ["decode", "all", "context"])
def test_a_chunked_prefill_compresses_where_the_phase_says(phase, make_keep):
    """generate's prefill_chunk_size: decode still compresses after the whole prompt; a keep
    set of KV heads or of query heads (those streamed on full KV heads recomputed per chunk)."""
    model = build(next(f for f in FAMILIES if f.name == "Mistral"))
    shape = ModelShape.of(model)
    inputs = batch(model.get_output_embeddings().weight.shape[0])
    keep = make_keep(shape)
    cache = HeadwiseCache(shape, keep, SINK, RECENT, phase, CONTEXT if phase == "context" else None)
    with torch.no_grad():
        got = generate(model, cache, prefill_chunk_size=8, **inputs)
    streamed = ~keep if keep.shape[1] == shape.num_heads else (~keep).repeat_interleave(shape.group, dim=1)
    want = plain(model, inputs, HeadMask(streamed, "stream", phase, SINK, RECENT), AT[phase])
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(logits(got), logits(want), rtol=1e-4, atol=1e-4)
    assert cache.nbytes() == cache_bytes(shape, keep, 2, cache.get_seq_length(), 4, SINK, RECENT, AT[phase], START)


def test_keep_top_ranks_kv_heads_by_their_best_query_head():
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.2], [0.3, 0.0, 0.0, 0.25]])
    assert keep_top(scores, 2, k=2).tolist() == [[True, False], [True, False]]
    assert keep_top(scores, 1, fraction=0.25).tolist() == [[False, True, False, False], [True, False, False, False]]
    with pytest.raises(UserError, match="exactly one"):
        keep_top(scores, 2)
    with pytest.raises(UserError, match="KV heads"):
        keep_top(scores, 2, k=5)
    with pytest.raises(UserError, match="between 0 and 1"):
        keep_top(scores, 2, fraction=1.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_beams": 2}, "num_beams"),
    ({"prompt_lookup_num_tokens": 3}, "prompt_lookup"),
    ({"cache_implementation": "offloaded"}, "cache_implementation"),
])
def test_unsupported_generation_is_refused_before_any_work(kwargs, match):
    model = build(next(f for f in FAMILIES if f.name == "Llama (GQA)"))
    shape = ModelShape.of(model)
    cache = HeadwiseCache(shape, mixed_keep(shape), SINK, RECENT)
    with pytest.raises(UserError, match=match):
        generate(model, cache, input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, **kwargs)
    assert cache.get_seq_length() == 0  # nothing ran


def test_a_headwise_cache_outside_its_scope_says_how_to_run_it():
    model = build(next(f for f in FAMILIES if f.name == "Llama (GQA)"))
    shape = ModelShape.of(model)
    cache = HeadwiseCache(shape, mixed_keep(shape), SINK, RECENT)
    with torch.no_grad(), pytest.raises(UserError, match="HeadwiseAttention"):
        model(input_ids=torch.tensor([[1, 2, 3]]), cache=cache, use_cache=True)


def test_a_compressed_cache_refuses_what_needs_the_dropped_keys():
    model = build(next(f for f in FAMILIES if f.name == "Llama (GQA)"))
    shape = ModelShape.of(model)
    cache = HeadwiseCache(shape, mixed_keep(shape), SINK, RECENT)
    for op in (lambda: cache.crop(-1), lambda: cache.reorder_cache(torch.tensor([0])),
               lambda: cache.batch_select_indices(torch.tensor([0])), lambda: cache.batch_repeat_interleave(2),
               lambda: cache.offload(0)):
        with pytest.raises(UserError, match="head-wise cache cannot"):
            op()
    with pytest.raises(UserError, match="kv_heads"):
        HeadwiseCache(shape, torch.ones(2, 2, dtype=torch.bool), SINK, RECENT)
    with pytest.raises(UserError, match="context_length"):
        HeadwiseCache(shape, mixed_keep(shape), SINK, RECENT, "context")


def test_the_generate_command_answers_and_reports_the_memory(tmp_path, capsys, default_tokenizer):
    """On a tiny saved Llama (2 layers x 2 KV heads): the answer is the library's, and the
    memory line gives the cache's bytes (``keep.cache_bytes``) against a full cache's."""
    tiny = save_tiny_llama(tmp_path / "tiny", default_tokenizer)
    scores = {f"{layer}-{h}": [0.1 * (4 * layer + h)] for layer in range(2) for h in range(4)}
    (tmp_path / "hs.json").write_text(json.dumps(scores) + "\n")
    (tmp_path / "p.txt").write_text("The code word is heron. " * 6 + "What is the code word?")
    argv = ["generate", str(tmp_path / "p.txt"), "--model_path", str(tiny), "--head_score", str(tmp_path / "hs.json"),
            "--keep_full", "1", "--unit", "kv", "--chat_template", "off", "--sink", "2", "--recent", "4",
            "--max_new_tokens", "3"]  # one KV head, ranked by its best query head; the prompt as it is
    assert commands.main(argv) == 0
    answer, memory = capsys.readouterr().out.rstrip("\n").rsplit("\n", 1)
    assert memory.startswith("memory: KV cache ") and "1/4 KV heads full" in memory and "peak RSS" in memory
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    shape = ModelShape.of(model)
    keep = keep_top(torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]]), shape.group, k=1)
    assert keep.tolist() == [[False, False], [False, True]]
    ids = default_tokenizer((tmp_path / "p.txt").read_text(), return_tensors="pt")["input_ids"]
    cache = HeadwiseCache(shape, keep, 2, 4, "decode")
    with torch.no_grad():
        out = generate(model, cache, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                       do_sample=False, pad_token_id=default_tokenizer.eos_token_id)
    assert answer == default_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    full = cache_bytes(shape, None, 1, cache.get_seq_length(), 4)
    assert f"{cache.nbytes() / 2**20:.2f} MiB held of {full / 2**20:.2f} MiB full" in memory
