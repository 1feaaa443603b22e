"""Shared fixtures: the embedded default model (installed by `make install`) and tiny
random-weight models built here. Nothing is downloaded: `make test` sets HF_HUB_OFFLINE=1."""

import contextlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@contextlib.contextmanager
def one_thread():
    """One torch thread, restored on exit. On 2 shared cores a second intra-op thread that
    gets descheduled makes every op wait: tiny models ran ~10x slower that way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def default_model_dir():
    from retrieval_head.default_model import default_model_dir as d

    return d()


@pytest.fixture(scope="session")
def default_tokenizer():
    from transformers import AutoTokenizer

    path = default_model_dir()
    if not (path / "config.json").is_file():
        pytest.skip("default model not installed (run `make install`)")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def default_model():
    from retrieval_head import ModelSpec, load_model

    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("default model not installed (run `make install`)")
    model, tok, info = load_model(ModelSpec(device="cpu"))
    return model, tok, info


def tiny_llama(vocab=128, layers=3, heads=4, kv_heads=2, seed=0, **kw):
    """A random-weight Llama (GQA by default) small enough for any test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16 * heads, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512, **kw)
    return LlamaForCausalLM(cfg).eval()


def eager_rescore(model, trial: dict) -> list:
    """Re-score a saved trial (``--save_prompts``) with plain eager attention weights: one
    forward over prompt + response with ``output_attentions=True``, argmax per head."""
    from retrieval_head.scoring import RetrievalScorer

    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        prompt, resp = trial["prompt_ids"], trial["response_ids"]
        with torch.no_grad():
            att = model(torch.tensor([prompt + resp[:-1]]), output_attentions=True, logits_to_keep=1).attentions
        sc = RetrievalScorer(prompt, tuple(trial["needle_span"]), model.config.num_hidden_layers,
                             model.config.num_attention_heads)
        for step, tok in enumerate(resp):
            q = len(prompt) - 1 + step
            sc.update(torch.stack([a[0, :, q, : q + 1].argmax(-1) for a in att]), tok)
        return sc.scores().tolist()
    finally:
        model.config._attn_implementation = impl
