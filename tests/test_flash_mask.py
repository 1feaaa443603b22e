"""The scope under a flash backend: flash's mask contract, run on CPU against eager.

transformers' flash *mask* function (pure Python) returns None when there is no padding and
the 2-D ``[batch, kv_len]`` padding mask when there is; the sliding window reaches the kernel
as the ``sliding_window`` kwarg of the attention call (``window_size=(W-1, W-1)``), never in
a mask. Caches that keep every key of sliding layers (``GrowingCache(config=None)``: prefix
reuse, stacked rows) then rely on that kwarg alone.

flash-attn cannot run here (no GPU), so this file registers, for its own duration, a backend
``flash_attention_2_cpu_exact`` made of the real pieces: the mask function
``ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"]`` and the attention function
``ALL_ATTENTION_FUNCTIONS["flash_attention_2"]`` (transformers' own integration: kwarg
processing, un/padding, the kernel looked up by ``module.config._attn_implementation``).
Only the kernels are swapped for exact plain-torch ones with flash-attn's semantics
(bottom-right causal, ``window_size``, ``softcap``, ``s_aux`` sinks as vllm's FA3, GQA,
``softmax_scale``), served for that name only by a patched ``_lazy_imports``; any other
name goes to the real lookup, which fails for unknown names as it does on a GPU.

On every sliding family of the matrix, prompts longer than the window, the probe's argmax
positions, the answers, the logits and the head masks equal those under eager.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformers.modeling_flash_attention_utils as fau
from families import FAMILIES, WINDOW, build
from helpers import IdsTokenizer, one_thread
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from retrieval_head.core.decode import cache_kwarg, check_supported, decode_rows, greedy_decode, prefill
from retrieval_head.core.intervene import ArgmaxProbe, HeadMask, intervene
from retrieval_head.core.kvcache import GrowingCache, snapshot, stack_rows
from retrieval_head.engine.prefix import SharedPrefix

FLASH_CPU = "flash_attention_2_cpu_exact"  # "flash" in the name: transformers' is_flash_attention_requested
SLIDING = [f for f in FAMILIES if "sliding window" in f.features]
PROMPT_LEN, STEPS = 40, 5
LOGIT_ATOL = 1e-5
assert PROMPT_LEN > 2 * WINDOW


# --------------------------------------------------------------------------- CPU flash kernels


def _attend(q, k, v, softmax_scale, causal, window_size, softcap, s_aux):
    """flash-attn's forward on equal lengths: q [b, sq, H, d], k/v [b, sk, KV, d] -> [b, sq, H, d].

    Query i sits at ``i + sk - sq`` (bottom-right aligned) and sees keys in
    ``[pos - window_size[0], pos + window_size[1]]`` (-1 = unbounded; causal sets the right
    bound to 0). Softcap acts on the scaled scores; a sink logit per head takes softmax mass."""
    b, sq, num_heads, d = q.shape
    sk, kv_heads = k.shape[1], k.shape[2]
    k = k.repeat_interleave(num_heads // kv_heads, dim=2)
    v = v.repeat_interleave(num_heads // kv_heads, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float())
    s = s * (softmax_scale if softmax_scale is not None else d**-0.5)
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    qpos = torch.arange(sq)[:, None] + (sk - sq)
    kpos = torch.arange(sk)[None, :]
    left, right = window_size
    right = 0 if causal else right
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        ok &= kpos >= qpos - left
    if right >= 0:
        ok &= kpos <= qpos + right
    s = s.masked_fill(~ok, float("-inf"))
    if s_aux is not None:
        sink = s_aux.float().reshape(1, num_heads, 1, 1).expand(b, -1, sq, 1)
        p = torch.softmax(torch.cat([s, sink], dim=-1), dim=-1)[..., :-1]
    else:
        p = torch.softmax(s, dim=-1)
    p = p.nan_to_num(0.0)  # a query with no key outputs 0, as flash does
    return torch.einsum("bhqk,bkhd->bqhd", p, v.float()).to(q.dtype)


def cpu_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, s_aux=None):
    assert dropout_p == 0.0 and alibi_slopes is None
    return _attend(q, k, v, softmax_scale, causal, window_size, softcap, s_aux)


def cpu_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                               dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, s_aux=None):
    """Unpadded sequences: q [total_q, H, d], k/v [total_k, KV, d], each sequence on its own."""
    assert dropout_p == 0.0 and alibi_slopes is None
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        out[qs] = _attend(q[None, qs], k[None, ks], v[None, ks], softmax_scale, causal, window_size, softcap,
                          s_aux)[0]
    return out


_FA_GLOBALS = ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn",
               "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn")


@contextlib.contextmanager
def flash_cpu_backend():
    """Register FLASH_CPU (real flash mask + real flash integration, CPU kernels); undo on exit."""
    real_lazy = fau._lazy_imports
    saved = {n: getattr(fau, n) for n in _FA_GLOBALS if hasattr(fau, n)}

    def lazy_imports(implementation, attention_wrapper=None, allow_all_kernels=False):
        if implementation == FLASH_CPU:
            return cpu_flash_attn_func, cpu_flash_attn_varlen_func, None, fau._pad_input, fau._unpad_input
        return real_lazy(implementation, attention_wrapper, allow_all_kernels)

    AttentionInterface.register(FLASH_CPU, ALL_ATTENTION_FUNCTIONS["flash_attention_2"])
    AttentionMaskInterface.register(FLASH_CPU, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    fau._lazy_imports = lazy_imports
    try:
        yield
    finally:
        fau._lazy_imports = real_lazy
        for n, val in saved.items():
            setattr(fau, n, val)
        AttentionInterface._global_mapping.pop(FLASH_CPU, None)
        AttentionMaskInterface._global_mapping.pop(FLASH_CPU, None)


@contextlib.contextmanager
def use_impl(model, impl: str):
    """``_attn_implementation = impl`` on the model's config and sub-configs, restored on exit."""
    cfgs = [model.config] + [getattr(model.config, n) for n in (getattr(model.config, "sub_configs", {}) or {})
                             if getattr(model.config, n, None) is not None]
    saved = [(c, c._attn_implementation) for c in cfgs]
    try:
        for c, _ in saved:
            c._attn_implementation = impl
        yield
    finally:
        for c, was in saved:
            c._attn_implementation = was


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def _module_setup():
    with one_thread(), flash_cpu_backend():
        yield


@pytest.fixture(scope="module")
def models():
    made: dict = {}

    def get(fam):
        if fam.name not in made:
            made[fam.name] = build(fam)
        return made[fam.name]

    return get


def _prompt(n=PROMPT_LEN, seed=1, vocab=128) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _stop(model):
    return torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.bool)


def _forward(model, ids, cache=None, **kw):
    if cache is not None:
        kw.update({cache_kwarg(model): cache, "use_cache": True})
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def _heads(model, *layer_head):
    m = torch.zeros(model.config.num_hidden_layers, model.config.num_attention_heads, dtype=torch.bool)
    for layer, head in layer_head:
        m[layer, head] = True
    return m


def _assert_same_run(fam, got, want, what):
    (g_ids, g_pos), (w_ids, w_pos) = got, want
    assert g_ids == w_ids, f"{fam.name} {what}: flash answer {g_ids} != eager {w_ids}"
    for t, (a, b) in enumerate(zip(g_pos, w_pos)):
        bad = (a != b).nonzero().tolist()
        assert not bad, (f"{fam.name} {what}: step {t} probe positions differ from eager at [layer, ..., head] "
                         f"{bad[:4]}: flash {[a[tuple(i)].item() for i in bad[:4]]} "
                         f"eager {[b[tuple(i)].item() for i in bad[:4]]}")


def _greedy(model, impl, prompt, cache_factory=None):
    """(answer ids, per-step probe positions [layers, heads]) of greedy_decode under impl."""
    seen = []
    with use_impl(model, impl):
        cache = None
        if cache_factory is not None:
            cache = prefill(model, torch.tensor([prompt[:-1]]), cache=cache_factory(), reserve=STEPS)
        gen = greedy_decode(model, IdsTokenizer(), prompt, _stop(model), STEPS, probe=ArgmaxProbe(), cache=cache,
                            on_step=lambda t, tok, pos: seen.append(pos[:, 0].clone()))
    return gen.ids, seen


# --------------------------------------------------------------------------- tests


def test_matrix_has_the_sliding_families():
    names = {f.name for f in SLIDING}
    assert {"Mistral", "Mixtral", "Qwen2 (sliding)", "Gemma2", "Gemma3", "Starcoder2", "GPT-OSS"} <= names


@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_check_supported_under_flash(fam, models):
    """check_supported prefills inside the scope: the delegate must find its flash kernel."""
    model = models(fam)
    with use_impl(model, FLASH_CPU):
        check_supported(model)


@pytest.mark.parametrize("keep_all", [False, True], ids=["windowed cache", "keep-all cache"])
@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_greedy_probe_equals_eager(fam, keep_all, models):
    model = models(fam)
    prompt = _prompt()
    factory = (lambda: GrowingCache(reserve=STEPS)) if keep_all else None
    _assert_same_run(fam, _greedy(model, FLASH_CPU, prompt, factory), _greedy(model, "eager", prompt, factory),
                     "greedy_decode" + (" (GrowingCache(config=None))" if keep_all else ""))


@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_stacked_rows_probe_equals_eager(fam, models):
    model = models(fam)
    base, needle = _prompt(PROMPT_LEN - 4, seed=5), [7, 8, 9, 10]
    prompts = [base[:at] + needle + base[at:] for at in (3, 17, 30)]

    def run(impl):
        seen = [[] for _ in prompts]
        with use_impl(model, impl):
            rows = [snapshot(prefill(model, torch.tensor([p[:-1]]), cache=GrowingCache())) for p in prompts]
            out = decode_rows(model, [p[-1] for p in prompts], len(prompts[0]) - 1, stack_rows(rows, STEPS),
                              _stop(model), STEPS, probe=ArgmaxProbe(),
                              on_step=lambda i, t, tok, pos: seen[i].append(pos[:, 0].clone()))
        return out, seen

    (f_out, f_seen), (e_out, e_seen) = run(FLASH_CPU), run("eager")
    for i in range(len(prompts)):
        _assert_same_run(fam, (f_out[i], f_seen[i]), (e_out[i], e_seen[i]), f"stacked row {i}")


@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_prefix_reuse_probe_equals_eager(fam, models):
    model = models(fam)
    base = _prompt(PROMPT_LEN, seed=6)
    prompts = [base[:30] + [5, 6, 7] + base[30:], base[:34] + [5, 6, 7] + base[34:]]

    def run(impl):
        runs = []
        with use_impl(model, impl):
            shared = SharedPrefix(model, min_shared=8, min_fraction=0.1, reserve=STEPS)
            for p in prompts:
                seen = []
                gen = greedy_decode(model, IdsTokenizer(), p, _stop(model), STEPS, probe=ArgmaxProbe(),
                                    cache=shared.cache_for(p),
                                    on_step=lambda t, tok, pos, seen=seen: seen.append(pos[:, 0].clone()))
                runs.append((gen.ids, seen))
            assert shared.reused_tokens > 0
        return runs

    for i, (f, e) in enumerate(zip(run(FLASH_CPU), run("eager"))):
        _assert_same_run(fam, f, e, f"prefix reuse, prompt {i}")


@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_probe_output_equals_delegate_and_eager(fam, models):
    """One decode step on a keep-all cache: the probe's own output is the kernel's and eager's."""
    model = models(fam)
    ids = torch.tensor([_prompt(seed=2)])
    with use_impl(model, FLASH_CPU):
        c_plain, c_probe = GrowingCache(), GrowingCache()
        _forward(model, ids[:, :-1], c_plain)
        _forward(model, ids[:, :-1], c_probe)
        plain = _forward(model, ids[:, -1:], c_plain)
        with intervene(model, probe=ArgmaxProbe()):
            probed = _forward(model, ids[:, -1:], c_probe)
    with use_impl(model, "eager"):
        c_eager = GrowingCache()
        _forward(model, ids[:, :-1], c_eager)
        eager = _forward(model, ids[:, -1:], c_eager)
    torch.testing.assert_close(plain, eager, atol=LOGIT_ATOL, rtol=0,
                               msg=lambda m: f"{fam.name}: CPU flash kernel != eager (test assumption): {m}")
    torch.testing.assert_close(probed, plain, atol=LOGIT_ATOL, rtol=0,
                               msg=lambda m: f"{fam.name}: probe output != flash delegate: {m}")


@pytest.mark.parametrize("phase", ["decode", "all"])
@pytest.mark.parametrize("mode", ["uniform", "zero"])
@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_masks_equal_eager(fam, mode, phase, models):
    """HeadMask inside intervene: a full forward, then a decode step on a keep-all cache (with
    the probe, which computes that step itself): the same logits and positions as eager."""
    model = models(fam)
    n_layers = model.config.num_hidden_layers
    mask = HeadMask(_heads(model, *[(layer, 1) for layer in range(n_layers)], (0, 2)), mode, phase)
    ids = torch.tensor([_prompt(seed=3)])

    def run(impl):
        with use_impl(model, impl):
            plain = _forward(model, ids)
            with intervene(model, mask=mask):
                full = _forward(model, ids)
            cache, probe = GrowingCache(), ArgmaxProbe()
            with intervene(model, mask=mask):
                _forward(model, ids[:, :-1], cache)
            with intervene(model, probe=probe, mask=mask):
                step = _forward(model, ids[:, -1:], cache)
        return plain, full, step, probe.positions(ids.shape[1] - 1, n_layers)

    f_plain, f_full, f_step, f_pos = run(FLASH_CPU)
    e_plain, e_full, e_step, e_pos = run("eager")
    torch.testing.assert_close(f_full, e_full, atol=LOGIT_ATOL, rtol=0,
                               msg=lambda m: f"{fam.name} {mode}/{phase}: full forward != eager: {m}")
    torch.testing.assert_close(f_step, e_step, atol=LOGIT_ATOL, rtol=0,
                               msg=lambda m: f"{fam.name} {mode}/{phase}: decode step != eager: {m}")
    assert torch.equal(f_pos, e_pos), f"{fam.name} {mode}/{phase}: masked probe positions != eager"
    if phase == "all":
        assert (f_full - f_plain).abs().max() > 1e-3, f"{fam.name}: the mask changed nothing (vacuous)"
    assert (f_step - f_plain[:, -1:]).abs().max() > 1e-3, f"{fam.name}: the decode-step mask changed nothing"


@pytest.mark.parametrize("keep_all", [False, True], ids=["windowed cache", "keep-all cache"])
@pytest.mark.parametrize("fam", SLIDING, ids=[f.name for f in SLIDING])
def test_padded_batch_probe_equals_eager(fam, keep_all, models):
    """Two rows, row 0 left-padded: flash's mask function hands the probe a 2-D padding mask."""
    model = models(fam)
    pad = 6
    ids = torch.tensor([[0] * pad + _prompt(PROMPT_LEN - pad, seed=7), _prompt(seed=8)])
    attn = torch.ones_like(ids)
    attn[0, :pad] = 0
    n_layers = model.config.num_hidden_layers

    def run(impl):
        toks, rels, logits = [], [], []
        with use_impl(model, impl):
            cache = GrowingCache(reserve=STEPS) if keep_all else GrowingCache(model.config, reserve=STEPS)
            _forward(model, ids[:, :-1], cache, attention_mask=attn[:, :-1])
            inp, m, probe = ids[:, -1:], attn, ArgmaxProbe()
            with intervene(model, probe=probe):
                for _ in range(STEPS):
                    probe.clear()
                    out = _forward(model, inp, cache, attention_mask=m)[:, -1]
                    rels.append(torch.stack([probe.rel[i] for i in range(n_layers)]))  # [layers, 2, heads]
                    logits.append(out)
                    inp = out.argmax(-1)[:, None]
                    toks.append(inp[:, 0].tolist())
                    m = torch.cat([m, torch.ones_like(m[:, :1])], dim=1)
        return toks, rels, torch.stack(logits)

    f_toks, f_rels, f_logits = run(FLASH_CPU)
    e_toks, e_rels, e_logits = run("eager")
    assert f_toks == e_toks, f"{fam.name}: padded batch answers differ: flash {f_toks} eager {e_toks}"
    for t, (a, b) in enumerate(zip(f_rels, e_rels)):
        kv_len = PROMPT_LEN + t
        assert (a[:, 0] >= pad - kv_len).all(), f"{fam.name} step {t}: row 0 argmax on padding: {a[:, 0].tolist()}"
        bad = (a != b).nonzero().tolist()
        assert not bad, f"{fam.name} step {t}: padded-batch probe positions differ from eager at {bad[:4]}"
    torch.testing.assert_close(f_logits, e_logits, atol=LOGIT_ATOL, rtol=0,
                               msg=lambda m: f"{fam.name}: padded batch logits != eager: {m}")
