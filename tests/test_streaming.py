"""Streaming heads are exact: on every family of the matrix, both phases, query- and KV-head
units, decoded by the scheduler with prefix reuse and batching on, each row's greedy answer
is what plain eager attention gives under the explicit per-head mask.

The oracle knows nothing of ``retrieval_head.core.intervene``: each greedy step is one full
forward (no cache) over prompt + answer so far through the modeling file's own eager
function, with a ``[batch, heads, query, key]`` additive mask built here from positions:
causal and windowed as the model's mask says, and for a streamed head only keys ``j < sink``
or ``q - j < recent`` (phase all), or, for the decode rows, ``j < sink``, ``P - recent <= j``
(phase decode: the prefill's ``P`` keys compressed once).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from fractions import Fraction

import pytest
import torch
from families import SUPPORTED, build, matrix
from helpers import one_thread
from oracle_attention import attention_as

from retrieval_head.core.intervene import HeadMask
from retrieval_head.core.stream import full_kv_heads, kv_kept
from retrieval_head.engine.scheduler import Job, Levers, Scheduler
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape

SINK, RECENT, STEPS, LENGTH = 4, 8, 4, 300  # sliding layers (window 16): the sink falls outside the window
AT = (262, 275, 290)  # needle insertion points past SharedPrefix's 256-token minimum: prefixes are reused


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def prompts(vocab: int) -> list[Job]:
    base = torch.randint(0, vocab, (LENGTH - 5,), generator=torch.Generator().manual_seed(4)).tolist()
    needle = [5, 6, 7, 8, 9]
    return [Job(at, Prompt(base[:at] + needle + base[at:], (at, at + 5), at, LENGTH - 5)) for at in AT]


def stream_sets(shape: ModelShape, unit: str) -> list[torch.Tensor]:
    """Two different sets of streamed query heads (KV unit: whole groups)."""
    L, H, KV = shape.num_layers, shape.num_heads, shape.num_kv_heads
    out = []
    for shift in (0, 1):
        if unit == "kv":
            kv = torch.tensor([[(l + k + shift) % 2 == 0 for k in range(KV)] for l in range(L)])
            out.append(kv.repeat_interleave(shape.group, dim=1))
        else:
            out.append(torch.tensor([[(l + h + shift) % 3 != 0 for h in range(H)] for l in range(L)]))
    return out


@contextlib.contextmanager
def oracle(model, streamed: torch.Tensor, phase: str, prefill_len: int):
    """Every attention call through the modeling file's eager function, under explicit
    per-head masks for the streamed heads ``[layers, heads]``."""
    name = f"stream_oracle_{uuid.uuid4().hex[:6]}"

    def attention(module, query, key, value, attention_mask, **kw):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        b, H, q, _ = query.shape
        T = key.shape[2]
        base = torch.zeros(b, 1, q, T) if attention_mask is None else attention_mask[..., -q:, -T:]
        if base.dtype == torch.bool:
            base = torch.zeros(base.shape).masked_fill(~base, float("-inf"))
        qpos = torch.arange(T - q, T)[:, None]
        kpos = torch.arange(T)[None, :]
        if phase == "all":
            sees = (kpos < SINK) | (qpos - kpos < RECENT)
        else:  # rows of the prefill see everything; decode rows see the compressed prefill + what followed
            sees = (qpos < prefill_len) | (kpos < SINK) | (kpos >= prefill_len - RECENT)
        heads = streamed[module.layer_idx].reshape(1, H, 1, 1)
        extra = torch.zeros(1, H, q, T).masked_fill(heads & ~sees, float("-inf"))
        kw.pop("sliding_window", None)  # the window is in `base` already (eager's mask)
        return eager(module, query, key, value, base + extra, **kw)

    with attention_as(model, name, attention):
        yield


@torch.no_grad()
def oracle_answer(model, ids: list[int], streamed, phase: str) -> tuple[list[int], torch.Tensor]:
    """The greedy answer, and the first step's logits."""
    out, first, prefill_len = [], None, len(ids) - 1  # the prompt's last token is the first decode step
    with oracle(model, streamed, phase, prefill_len):
        for _ in range(STEPS):
            logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits[0, -1]
            first = logits if first is None else first
            out.append(int(logits.argmax()))
    return out, first


@pytest.mark.parametrize("unit", ["query", "kv"])
@pytest.mark.parametrize("phase", ["all", "decode"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_streaming_equals_eager_under_the_explicit_mask(fam, phase, unit):
    model = build(fam)
    shape = ModelShape.of(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    sets = stream_sets(shape, unit)
    masks = [None] + [HeadMask(s, "stream", phase, SINK, RECENT) for s in sets]
    scheduler = Scheduler(model, shape, torch.zeros(vocab, dtype=torch.bool), STEPS, Levers())
    rows = list(scheduler.run(prompts(vocab), masks=masks))
    assert len(rows) == 3 * len(masks)
    assert scheduler.stats["prefilled_tokens"] < scheduler.stats["prompt_tokens"]  # prefix reuse on
    assert max(scheduler.stats["decode_batches"]) > 1  # batching on
    first = {}
    for r in rows:
        streamed = torch.zeros(shape.grid, dtype=torch.bool) if r.mask == 0 else sets[r.mask - 1]
        ids, first[r.job.key, r.mask] = oracle_answer(model, r.job.prompt.ids, streamed, phase)
        assert r.ids == ids, f"prompt {r.job.key}, mask {r.mask}"
    moved = max(float((first[k, m] - first[k, 0]).abs().max()) for k in AT for m in (1, 2))
    assert moved > 1e-3, "streaming changed no logit: the check is vacuous"


def test_kv_kept_counts_whole_groups_and_windows():
    """A KV head is compressed only when all its query heads stream; sliding layers hold their window."""
    from families import FAMILIES

    fam = next(f for f in FAMILIES if f.name == "Gemma3")  # 3 layers (sliding, full, sliding), 4 heads / 2 KV
    shape = ModelShape.from_config(fam.config(128))
    kept = torch.zeros(shape.grid, dtype=torch.bool)
    kept[1, 0] = True  # one query head of KV head 0 of the full layer: that KV head stays whole
    full = full_kv_heads(shape, kept)
    assert full.tolist() == [[False, False], [True, False], [False, False]]
    # at 100 tokens: sliding layers hold 16 per head, the full layer 100; streamed heads hold min(held, 4 + 8)
    assert kv_kept(shape, 100, 4, 8, full) == Fraction(12 + 12 + 100 + 12 + 12 + 12, 16 * 2 + 100 * 2 + 16 * 2)


@pytest.mark.parametrize("phase", ["all", "decode"])
@pytest.mark.parametrize("name", ["Llama (GQA)", "Mistral", "Gemma2", "GPT-OSS"])
def test_the_probe_sees_what_streamed_heads_see(name, phase):
    """The probe composes with streaming: at every decode step its argmax is the row max of
    the oracle's eager weights under the explicit per-head mask (streamed heads never point
    at a dropped key)."""
    fam = next(f for f in SUPPORTED if f.name == name)
    model = build(fam)
    shape = ModelShape.of(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    streamed = stream_sets(shape, "query")[0]
    job = prompts(vocab)[0]
    scheduler = Scheduler(model, shape, torch.zeros(vocab, dtype=torch.bool), STEPS, Levers())
    (row,) = scheduler.run([job], masks=[HeadMask(streamed, "stream", phase, SINK, RECENT)], probe=True)
    ids, prefill_len = job.prompt.ids, len(job.prompt.ids) - 1
    with torch.no_grad(), oracle(model, streamed, phase, prefill_len):
        att = model(input_ids=torch.tensor([ids + row.ids[:-1]]), output_attentions=True, use_cache=False).attentions
    for t, pos in enumerate(row.positions):  # [layers, heads]
        q = prefill_len + t
        for layer, a in enumerate(att):
            w = a[0, :, q, : q + 1].float()  # [H, q + 1]
            picked = w.gather(1, pos[layer].unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(picked, w.max(1).values, atol=1e-5, rtol=0,
                                       msg=lambda m, t=t, layer=layer: f"step {t} layer {layer}: {m}")
            assert (w[streamed[layer]].gather(1, pos[layer][streamed[layer]].unsqueeze(1)) > 0).all()


@pytest.mark.parametrize("name", ["Llama (GQA)", "Mistral"])
def test_one_scope_serves_prompts_of_different_lengths(name):
    """A decode-phase stream hook is told each prompt's compression point (its prefill
    length), so one scope decodes a long and then a shorter prompt each as the eager oracle
    does under the explicit mask; a point remembered from the first prompt would be wrong
    for the second (its logits move, checked below)."""
    from retrieval_head.core.decode import cache_kwarg
    from retrieval_head.core.intervene import intervene
    from retrieval_head.core.kvcache import GrowingCache

    model = build(next(f for f in SUPPORTED if f.name == name))
    shape = ModelShape.of(model)
    streamed = stream_sets(shape, "query")[0]
    long = prompts(model.get_output_embeddings().weight.shape[0])[0].prompt.ids
    short = long[:200]
    hook = HeadMask(streamed, "stream", "decode", SINK, RECENT).hook()  # told each prompt's point below
    got = []
    with torch.no_grad(), intervene(model, hooks=[hook]):
        for ids in (long, short):
            kw = {cache_kwarg(model): GrowingCache(reserve=STEPS), "use_cache": True}
            model(input_ids=torch.tensor([ids[:-1]]), **kw)  # a multi-token call: a decode-phase hook leaves it
            hook.compress(len(ids) - 1)
            out, token = [], ids[-1]
            for _ in range(STEPS):
                token = int(model(input_ids=torch.tensor([[token]]), **kw).logits[0, -1].argmax())
                out.append(token)
            got.append(out)
    right = [oracle_answer(model, ids, streamed, "decode") for ids in (long, short)]
    assert got == [ids for ids, _ in right]
    with torch.no_grad(), oracle(model, streamed, "decode", len(long) - 1):  # the first prompt's point, remembered
        remembered = model(input_ids=torch.tensor([short]), use_cache=False).logits[0, -1]
    assert float((remembered - right[1][1]).abs().max()) > 1e-3


def test_a_decode_phase_stream_mask_must_be_told_the_prefill_length():
    """Without each prompt's compression point a decode-phase stream mask is refused before
    the scope opens (the model untouched), and a hook never told one refuses its first step."""
    from retrieval_head.core.intervene import intervene

    model = build(next(f for f in SUPPORTED if f.name == "Llama (GQA)"))
    mask = HeadMask(stream_sets(ModelShape.of(model), "query")[0], "stream", "decode", SINK, RECENT)
    before = model.config._attn_implementation
    with pytest.raises(ValueError, match="prefill length"):
        with intervene(model, mask=mask):
            pass
    assert model.config._attn_implementation == before
    with torch.no_grad(), pytest.raises(RuntimeError, match="compression point"):
        with intervene(model, hooks=[mask.hook()]):
            model(input_ids=torch.tensor([[1]]), use_cache=False)
    assert model.config._attn_implementation == before
