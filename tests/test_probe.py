"""The probe's argmax equals eager attention's, step by step; its output matches the backend;
the scope leaves the model as it was; unsupported models are refused by class name."""

import pytest
import torch
from helpers import IdsTokenizer, tiny_llama
from transformers import DynamicCache
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from retrieval_head.core.decode import greedy_decode
from retrieval_head.core.intervene import ArgmaxProbe, intervene
from retrieval_head.errors import UnsupportedModelError


def _probe_run(model, prompt, steps):
    probe, seen = ArgmaxProbe(), []
    stop = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    gen = greedy_decode(model, IdsTokenizer(), prompt, stop, steps, probe=probe,
                        on_step=lambda t, tok, pos: seen.append(pos[:, 0].clone()))
    return gen.ids, seen


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_probe_argmax_equals_eager_argmax_every_step(kv_heads):
    model = tiny_llama(vocab=64, layers=3, heads=4, kv_heads=kv_heads, seed=kv_heads)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 64, (40,), generator=g).tolist()
    ids, seen = _probe_run(model, prompt, steps=8)
    full = torch.tensor([prompt + ids[:-1]])
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        att = model(full, output_attentions=True).attentions  # per layer [1, H, T, T]
    model.config._attn_implementation = "sdpa"
    for t, pos in enumerate(seen):  # pos: [layers, heads], absolute positions
        q = len(prompt) - 1 + t
        for layer, a in enumerate(att):
            row = a[0, :, q, : q + 1]  # [H, q+1]
            picked = row.gather(1, pos[layer].unsqueeze(1)).squeeze(1)
            # random weights give near-ties: the weight at the probe's pick is the row max
            torch.testing.assert_close(picked, row.max(dim=1).values, atol=1e-6, rtol=1e-5)
            assert (pos[layer] <= q).all()


def test_probe_output_matches_backend():
    model = tiny_llama(seed=3)
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        c1, c2 = DynamicCache(config=model.config), DynamicCache(config=model.config)
        model(ids[:, :-1], cache=c1)
        model(ids[:, :-1], cache=c2)
        ref = model(ids[:, -1:], cache=c1).logits
        with intervene(model, probe=ArgmaxProbe()):
            got = model(ids[:, -1:], cache=c2).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_scope_leaves_model_unchanged():
    model = tiny_llama(seed=4)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    before_impl = model.config._attn_implementation
    with torch.no_grad():
        before = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with intervene(model, probe=ArgmaxProbe()):
                assert model.config._attn_implementation.startswith("retrieval_head_")
                raise RuntimeError("boom")
        after = model(ids).logits
    assert model.config._attn_implementation == before_impl
    assert torch.equal(before, after)
    for registry in (AttentionInterface._global_mapping, AttentionMaskInterface._global_mapping):
        assert not [k for k in registry if k.startswith("retrieval_head_")]


def test_gpt_neo_is_refused_by_class_name():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    cfg = GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]],
                       max_position_embeddings=128)
    model = GPTNeoForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="GPTNeoForCausalLM"):
        _probe_run(model, list(range(10)), steps=2)
