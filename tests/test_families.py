"""The family matrix: every supported architecture, tiny and random, through the same checks.

For each family of ``families`` (data: a name, a config factory, the
attention features it exercises, how a test finds its modules) a random-weight fp32 model
is built and:

(a) ``probe``: the ArgmaxProbe's absolute argmax positions, at every decode step of
    ``greedy_decode``, pick the row maximum of eager attention's weights on one full
    forward over prompt + answer (the prompt is longer than every sliding window), and a
    chunked prefill gives the same positions; ``probe_output``: the probe's own decode
    output equals the backend's (same logits, same greedy answer);
(b) ``uniform``: uniform masking of one head equals a plain forward hook zeroing that
    head's query (at the last module that produces it: ``q_proj``, a fused qkv, or the
    q-norm), and the head's slice of the output projection's input is the mean of its
    value vectors over the allowed (causal, windowed) prefix (sink-weighted with sinks);
    ``zero``: the head's slice of the output projection's input is exactly 0 and the
    model equals a plain pre-hook zeroing it;
(c) ``detect``: a one-trial detection with the default tokenizer runs end to end.

Families whose attention does not reach transformers' AttentionInterface are refused by
``check_supported`` with their class name. A family whose status follows the installed
transformers (``refused=None`` in ``families``: Falcon) is checked both ways: where its
attention routes through the interface it is in the matrix above, and with its modeling file's
interface lookup bypassed (its own attention code, as before 5.25) the library refuses it.
Expected values are computed without ``retrieval_head.core.intervene``: hooks, the eager
weights and the cache's value vectors.

``scripts/support_table.py`` runs this file under pytest and tabulates its outcomes by test
name and family id: renaming a test below means renaming it there too.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from families import (
    BY_ROUTING,
    REFUSED,
    SUPPORTED,
    WINDOW,
    Family,
    build,
    decided,
    family,
    matrix,
    routes_through_interface,
)
from helpers import IdsTokenizer, one_thread
from transformers import DynamicCache

from retrieval_head.core.decode import cache_kwarg, check_supported, greedy_decode
from retrieval_head.core.intervene import ArgmaxProbe, HeadMask, intervene
from retrieval_head.errors import UnsupportedModelError

PROMPT_LEN, STEPS = 40, 6  # the prompt is longer than every family's sliding window
PREFILL_CHUNK = 7  # shorter than the window: the sliding cache is filled across chunks
TIE_ATOL = 1e-5  # eager weights: the probe's pick equals the row max within this
assert PROMPT_LEN > WINDOW and PREFILL_CHUNK < WINDOW


# --------------------------------------------------------------------------- module access


def attention_module(fam: Family, model, layer: int):
    return getattr(getattr(model.base_model, fam.layers)[layer], fam.attn)


def head_dim(attn) -> int:
    return getattr(attn, "head_dim", None) or attn.head_size


def window_of(model, layer: int) -> int | None:
    """The layer's sliding window, read from the config as the modeling files do."""
    cfg = model.config
    w = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return w if types[layer] == "sliding_attention" else None
    return w


def kv_heads_of(model) -> int:
    return getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads


def declared_vs_config(fam: Family, model) -> dict[str, bool]:
    """What the built model actually has, per feature label (checked against ``features``)."""
    cfg = model.config
    a = attention_module(fam, model, 0)
    return {
        "GQA": kv_heads_of(model) < cfg.num_attention_heads,
        "sliding window": any(window_of(model, i) for i in range(cfg.num_hidden_layers)),
        "softcap": getattr(cfg, "attn_logit_softcapping", None) is not None,
        "q/k norm": any(hasattr(a, n) for n in ("q_norm", "q_layernorm")),
        "MoE": fam.moe,
        "attention sinks": hasattr(a, "sinks"),
    }


def _query_slice(fam: Family, out: torch.Tensor, h: int, d: int):
    if out.ndim == 4:  # a per-head norm's output
        return (slice(None), h) if fam.q_layout == "bhsd" else (..., h, slice(None))
    if fam.q_layout == "neox":
        return (..., slice(3 * d * h, 3 * d * h + d))
    return (..., slice(h * d, (h + 1) * d))


@contextlib.contextmanager
def zero_query_hook(fam: Family, model, layer: int, head: int):
    """A plain forward hook zeroing the head's query where the modeling file produces it."""
    attn = attention_module(fam, model, layer)
    d = head_dim(attn)

    def hook(mod, args, out):
        out = out.clone()
        out[_query_slice(fam, out, head, d)] = 0.0
        return out

    handle = getattr(attn, fam.q_site).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def out_proj_input(fam: Family, model, layer: int, zero_head: int | None = None):
    """Capture (and optionally zero one head of) the output projection's input."""
    attn = attention_module(fam, model, layer)
    d = head_dim(attn)
    got: list[torch.Tensor] = []

    def pre(mod, args):
        x = args[0]
        if zero_head is not None:
            x = x.clone()
            x[..., zero_head * d:(zero_head + 1) * d] = 0.0
        got.append(x.detach().clone())
        return (x, *args[1:])

    handle = getattr(attn, fam.out_proj).register_forward_pre_hook(pre)
    try:
        yield got
    finally:
        handle.remove()


# --------------------------------------------------------------------------- checks


def _prompt(n: int = PROMPT_LEN, vocab: int = 128, seed: int = 1) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _forward(model, ids: torch.Tensor, cache=None) -> torch.Tensor:
    kw = {} if cache is None else {cache_kwarg(model): cache, "use_cache": True}
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


@contextlib.contextmanager
def _eager(model):
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = impl


@torch.no_grad()
def check_probe(fam: Family, model=None) -> str:
    """(a) probe argmax == eager argmax, every decode step, layer and head, absolute positions."""
    model = model or build(fam)
    cfg = model.config
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = _prompt(vocab=vocab)
    probe, seen = ArgmaxProbe(), []
    stop = torch.zeros(vocab, dtype=torch.bool)
    gen = greedy_decode(model, IdsTokenizer(), prompt, stop, STEPS, probe=probe,
                        on_step=lambda t, tok, pos: seen.append(pos[:, 0].clone()))
    assert len(gen.ids) == STEPS == len(seen)
    with _eager(model):
        att = model(torch.tensor([prompt + gen.ids[:-1]]), output_attentions=True).attentions
    assert len(att) == cfg.num_hidden_layers
    rows = unique = 0
    for t, pos in enumerate(seen):  # pos: [layers, heads]
        q = len(prompt) - 1 + t
        assert pos.shape == (cfg.num_hidden_layers, cfg.num_attention_heads)
        for layer, a in enumerate(att):
            row = a[0, :, q, : q + 1].float()  # [H, q+1]
            assert (pos[layer] >= 0).all() and (pos[layer] <= q).all(), f"step {t} layer {layer}: {pos[layer]}"
            w = window_of(model, layer)
            if w is not None and w <= q:
                assert (row[:, : q - w + 1] == 0).all(), "eager did not apply the window (test assumption)"
                assert (pos[layer] > q - w).all(), f"layer {layer} picked outside its window: {pos[layer]}"
            picked = row.gather(1, pos[layer].unsqueeze(1)).squeeze(1)
            top2 = row.topk(2, dim=1).values
            torch.testing.assert_close(picked, top2[:, 0], atol=TIE_ATOL, rtol=0,
                                       msg=lambda m, t=t, layer=layer: f"step {t} layer {layer} ({fam.name}): {m}")
            rows += row.shape[0]
            unique += int((top2[:, 0] - top2[:, 1] > TIE_ATOL).sum())
    assert unique >= rows // 2, f"only {unique}/{rows} rows have a unique max: the check is near-vacuous"
    # a chunked prefill (chunks shorter than the window) fills the cache the same way
    chunked = []
    gen2 = greedy_decode(model, IdsTokenizer(), prompt, stop, STEPS, probe=ArgmaxProbe(), prefill_chunk=PREFILL_CHUNK,
                         on_step=lambda t, tok, pos: chunked.append(pos[:, 0].clone()))
    assert gen2.ids == gen.ids, f"chunked prefill changed the answer: {gen2.ids} vs {gen.ids}"
    for t, (a, b) in enumerate(zip(seen, chunked)):
        assert torch.equal(a, b), f"chunked prefill moved the argmax at step {t}: {a.tolist()} vs {b.tolist()}"
    return f"{rows} rows, {unique} with a unique max"


@torch.no_grad()
def check_probe_output(fam: Family, model=None) -> str:
    """(a') the probe computes each decode step's attention output itself: it must equal the
    backend's (same logits, same greedy answer), or detection would score another answer."""
    model = model or build(fam)
    cfg = model.config
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = _prompt(vocab=vocab)
    ids = torch.tensor([prompt])
    c1, c2 = DynamicCache(config=cfg), DynamicCache(config=cfg)
    _forward(model, ids[:, :-1], c1)
    _forward(model, ids[:, :-1], c2)
    ref = _forward(model, ids[:, -1:], c1)
    with intervene(model, probe=ArgmaxProbe()):
        got = _forward(model, ids[:, -1:], c2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"probe output != backend: {m}")
    stop = torch.zeros(vocab, dtype=torch.bool)
    plain = greedy_decode(model, IdsTokenizer(), prompt, stop, STEPS)
    probed = greedy_decode(model, IdsTokenizer(), prompt, stop, STEPS, probe=ArgmaxProbe())
    assert probed.ids == plain.ids, f"the probe changed the greedy answer: {probed.ids} vs {plain.ids}"
    return f"{STEPS} steps"


def _one_head(model, layer: int, head: int) -> torch.Tensor:
    m = torch.zeros(model.config.num_hidden_layers, model.config.num_attention_heads, dtype=torch.bool)
    m[layer, head] = True
    return m


def _values(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's value vectors [KV, T, d] from a plain forward into an all-full cache."""
    cache = DynamicCache()  # no config: every layer keeps all positions, sliding or not
    _forward(model, ids, cache)
    return [cache.layers[i].values[0] for i in range(model.config.num_hidden_layers)]


def _expected_uniform(fam: Family, model, values: list[torch.Tensor], layer: int, head: int,
                      q: int) -> torch.Tensor:
    """A zero query's output: the mean of the head's values over its allowed prefix of q.

    With attention sinks (a per-head logit s in the softmax, no value) each of the n keys
    gets 1 / (n + e^s) instead of 1 / n."""
    group = model.config.num_attention_heads // kv_heads_of(model)
    w = window_of(model, layer)
    lo = max(0, q - w + 1) if w else 0
    v = values[layer][head // group, lo: q + 1]
    sinks = getattr(attention_module(fam, model, layer), "sinks", None)
    if sinks is None:
        return v.mean(0)
    return v.sum(0) / (v.shape[0] + torch.exp(sinks[head].float()))


@torch.no_grad()
def check_uniform(fam: Family, model=None) -> str:
    """(b) uniform: == zeroing the query by a plain hook; output == mean of allowed values."""
    model = model or build(fam)
    cfg = model.config
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.tensor([_prompt(vocab=vocab, seed=2)])
    T = ids.shape[1]
    plain = _forward(model, ids)
    values = _values(model, ids)
    head = 1 % cfg.num_attention_heads
    for layer in range(cfg.num_hidden_layers):
        mask = HeadMask(_one_head(model, layer, head), "uniform", "all")
        d = head_dim(attention_module(fam, model, layer))
        # phase all, full forward (the delegate's prefill path)
        with out_proj_input(fam, model, layer) as got, intervene(model, mask=mask):
            masked = _forward(model, ids)
        x = got[0][0, :, head * d:(head + 1) * d]  # [T, d]
        want = torch.stack([_expected_uniform(fam, model, values, layer, head, q) for q in range(T)])
        torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, layer=layer: f"layer {layer} o-proj input != mean of values: {m}")
        with zero_query_hook(fam, model, layer, head):
            hooked = _forward(model, ids)
        torch.testing.assert_close(masked, hooked, atol=1e-4, rtol=1e-5,
                                   msg=lambda m, layer=layer: f"layer {layer}: uniform != zeroed query: {m}")
        assert (masked - plain).abs().max() > 1e-3, f"layer {layer}: masking changed nothing (vacuous)"
        # phase decode: plain prefill, one masked decode step
        cache = DynamicCache(config=cfg)
        _forward(model, ids[:, :-1], cache)
        with out_proj_input(fam, model, layer) as got, intervene(model, mask=HeadMask(mask.heads, "uniform")):
            _forward(model, ids[:, -1:], cache)
        torch.testing.assert_close(got[0][0, -1, head * d:(head + 1) * d],
                                   _expected_uniform(fam, model, values, layer, head, T - 1), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, layer=layer: f"layer {layer} decode step: {m}")
    return f"{cfg.num_hidden_layers} layers, head {head}, all + decode"


@torch.no_grad()
def check_zero(fam: Family, model=None) -> str:
    """(b) zero: the head's slice of the output projection's input is exactly 0."""
    model = model or build(fam)
    cfg = model.config
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.tensor([_prompt(vocab=vocab, seed=3)])
    head, layer = 2 % cfg.num_attention_heads, 1
    d = head_dim(attention_module(fam, model, layer))
    sl = slice(head * d, (head + 1) * d)
    mask = HeadMask(_one_head(model, layer, head), "zero", "all")
    with out_proj_input(fam, model, layer) as plain_in:
        plain = _forward(model, ids)
    with out_proj_input(fam, model, layer) as got, intervene(model, mask=mask):
        masked = _forward(model, ids)
    x, p = got[0], plain_in[0]
    assert torch.all(x[..., sl] == 0), "zero mode left the head's output non-zero"
    assert p[..., sl].abs().max() > 1e-3, "the head's output was zero to begin with (vacuous)"
    others = torch.ones(x.shape[-1], dtype=torch.bool)
    others[sl] = False
    torch.testing.assert_close(x[..., others], p[..., others], atol=1e-6, rtol=0)
    with out_proj_input(fam, model, layer, zero_head=head):
        hooked = _forward(model, ids)
    torch.testing.assert_close(masked, hooked, atol=1e-4, rtol=1e-5)
    assert (masked - plain).abs().max() > 1e-3, "masking changed nothing (vacuous)"
    # phase decode: only the decode step is zeroed
    cache = DynamicCache(config=cfg)
    with out_proj_input(fam, model, layer) as pre, intervene(model, mask=HeadMask(mask.heads, "zero")):
        _forward(model, ids[:, :-1], cache)
        _forward(model, ids[:, -1:], cache)
    # (MoE routing over a shorter batch is not bit-identical: compare, don't equal)
    torch.testing.assert_close(pre[0][..., sl], p[:, :-1, sl], atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"phase decode touched the prefill: {m}")
    assert torch.all(pre[1][..., sl] == 0), "phase decode did not zero the decode step"
    return f"layer {layer} head {head}, all + decode"


def write_detect_inputs(folder: Path) -> tuple[Path, Path]:
    """A one-needle file and a synthetic haystack folder."""
    folder.mkdir(parents=True, exist_ok=True)
    needles = folder / "needles.jsonl"
    needles.write_text(json.dumps({"needle": "The secret code of the blue harbour is amber falcon.",
                                   "question": "What is the secret code of the blue harbour?",
                                   "real_needle": "amber falcon"}) + "\n")
    hay = folder / "haystack"
    hay.mkdir(exist_ok=True)
    words = ["river", "mill", "stone", "winter", "garden", "lantern", "market", "road", "orchard", "bell"]
    sentences = [f"The {words[i % 10]} near the {words[(3 * i + 1) % 10]} was quiet on day {i}." for i in range(200)]
    (hay / "essay.txt").write_text(" ".join(sentences) + "\n")
    return needles, hay


DETECT_LENGTH = 160
_STOP_MASKS: dict = {}


@contextlib.contextmanager
def _stop_masks_memoised():
    """``stop_token_mask`` decodes the whole vocabulary (~1.5 s for 49k tokens) on every
    ``detect`` call; every family here shares one tokenizer, so compute it once per
    (tokenizer, vocab, EOS ids) with the library's own function."""
    import importlib
    from unittest import mock

    det = importlib.import_module("retrieval_head.experiments.detect")  # the package re-exports a function `detect`
    real = det.stop_token_mask

    def memo(model, tokenizer, newline=True):
        gen = getattr(model, "generation_config", None)
        key = (id(tokenizer), newline, model.get_output_embeddings().weight.shape[0],
               repr(getattr(gen, "eos_token_id", None)), repr(getattr(model.config, "eos_token_id", None)))
        if key not in _STOP_MASKS:
            _STOP_MASKS[key] = real(model, tokenizer, newline)
        return _STOP_MASKS[key]

    with mock.patch.object(det, "stop_token_mask", memo):
        yield


def check_detect(fam: Family, tokenizer, folder: Path, model=None) -> str:
    """(c) one trial of ``detect`` runs; the record's head scores are [layers][heads]."""
    from retrieval_head.experiments.detect import DetectionResult, DetectSettings, detect

    model = model or build(fam, vocab=len(tokenizer))
    needles, hay = write_detect_inputs(folder)
    settings = DetectSettings(context_lengths=(DETECT_LENGTH,), depth_percents=(50,), needles=str(needles),
                              haystack_dir=str(hay), chat_template="off", max_new_tokens=4)
    with _stop_masks_memoised():
        result = detect(model, tokenizer, settings, progress=False)
    cfg = model.config
    assert isinstance(result, DetectionResult)
    assert (result.num_layers, result.num_heads) == (cfg.num_hidden_layers, cfg.num_attention_heads)
    assert len(result.trials) == 1
    t = result.trials[0]
    assert t["prompt_length"] == DETECT_LENGTH
    assert 1 <= len(t["response_ids"]) <= 4
    scores = torch.tensor(t["head_scores"], dtype=torch.float64)
    assert scores.shape == (cfg.num_hidden_layers, cfg.num_attention_heads)
    assert torch.isfinite(scores).all()
    assert tuple(result.mean_scores().shape) == (cfg.num_hidden_layers, cfg.num_attention_heads)
    return f"1 trial, {len(t['response_ids'])} tokens, scores {list(scores.shape)}"


@torch.no_grad()
def check_refused(fam: Family, model=None) -> str:
    """A family that bypasses the interface: refused by class name. Returns the message."""
    model = model or build(fam)
    with pytest.raises(UnsupportedModelError) as exc:
        check_supported(model)
    msg = str(exc.value)
    assert fam.model_class in msg, f"the refusal does not name {fam.model_class}: {msg}"
    return msg


# --------------------------------------------------------------------------- tests


def _ids(fams):
    return [f.name for f in fams]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_models():
    """One model per supported family, shared by (a) and (b) (they leave it unchanged)."""
    cache: dict[str, object] = {}

    def get(fam: Family):
        if fam.name not in cache:
            cache[fam.name] = build(fam)
        return cache[fam.name]

    return get


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_declared_features_are_real(fam, tiny_models):
    model = tiny_models(fam)
    assert type(model).__name__ == fam.model_class
    real = declared_vs_config(fam, model)
    for feat, present in real.items():
        assert present == (feat in fam.features), f"{fam.name}: {feat} declared {feat in fam.features}, is {present}"


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_probe_argmax_equals_eager(fam, tiny_models):
    check_probe(fam, tiny_models(fam))


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_probe_output_equals_backend(fam, tiny_models):
    check_probe_output(fam, tiny_models(fam))


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_uniform_mask(fam, tiny_models):
    check_uniform(fam, tiny_models(fam))


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_zero_mask(fam, tiny_models):
    check_zero(fam, tiny_models(fam))


@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_detection_runs(fam, default_tokenizer, tmp_path):
    check_detect(fam, default_tokenizer, tmp_path)


@pytest.mark.parametrize("fam", REFUSED, ids=_ids(REFUSED))
def test_refused_by_class_name(fam):
    check_refused(fam)


# --------------------------------------------------------------------------- status by behaviour


@pytest.mark.parametrize("name", sorted(BY_ROUTING))
def test_status_follows_what_the_attention_does(name):
    """The installed transformers decides: in the matrix exactly when the tiny model's attention
    calls the interface, and the library's own check agrees either way."""
    fam = family(name)
    model = build(fam)
    routes = routes_through_interface(model)
    assert fam.refused is (not routes)
    assert (fam in SUPPORTED) is routes and (fam in REFUSED) is (not routes)
    if routes:
        check_supported(model)
    else:
        check_refused(fam, model)


class _OwnAttention:
    """Stands for a modeling file's ``ALL_ATTENTION_FUNCTIONS``: every lookup answers the
    file's own ``eager_attention_forward``, so the attention bypasses the interface."""

    def get_interface(self, name, default):
        return default

    def __getitem__(self, name):
        raise KeyError(name)


@pytest.mark.parametrize("name", sorted(BY_ROUTING))
def test_refused_when_its_attention_bypasses_the_interface(name, monkeypatch):
    """The same family with its attention computed by its own code (the modeling file's lookup
    bypassed; what it does before it routes): the oracle says so, the entry is decided refused,
    and ``check_supported`` refuses it by class name."""
    import importlib

    fam = family(name)
    module = importlib.import_module(type(build(fam)).__module__)
    monkeypatch.setattr(module, "ALL_ATTENTION_FUNCTIONS", _OwnAttention(), raising=False)
    model = build(fam)
    assert not routes_through_interface(model)
    assert decided(Family(fam.name, fam.model_class, fam.config, refused=None)).refused is True
    check_refused(fam, model)
