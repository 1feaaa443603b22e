"""The architecture families the library is checked on: tiny random-weight models, as data.

A family entry (``Family``) names one architecture: its transformers model class, a
config factory ``vocab -> config`` (3 layers, 4 heads, hidden size 64, sliding windows of
16 tokens where the architecture has them), the attention features it exercises (GQA,
sliding window, MoE, softcap, q/k norm, attention sinks), free-text notes, and the module
names a test needs to hook its attention. ``build`` turns an entry into a model with fixed
random weights. A family whose attention never reaches transformers' AttentionInterface is
marked ``refused``: the library must refuse it by class name. A family whose attention moved
to the interface in some transformers release (Falcon, in 5.25) is marked ``refused=None``:
its status is what the installed transformers' modeling file does, found by behaviour when
this module is imported (``routes_through_interface``: does one forward of the built model
call a function registered in the interface?), never by a version number. Where it routes,
it joins the matrix with every check of the others; where not, it must be refused by name.

``tests/test_families.py`` runs every supported family through the probe, mask and
detection checks (and checks that the declared features are really in the built model);
``scripts/support_table.py`` turns those results into the support table of ``docs/models.md``.

Adding a family: append a ``Family`` to ``FAMILIES`` (a config through ``_cfg`` when the
architecture takes Llama-style kwargs, a lambda otherwise), list in ``features`` exactly
the features its built model has, give the module names where they differ from Llama's,
then run ``tests/test_families.py`` and ``scripts/support_table.py --docs``.

    >>> len(SUPPORTED) + len(REFUSED), len(FAMILIES)
    (27, 27)
    >>> sorted(f.name for f in REFUSED if f.name not in BY_ROUTING)   # refused whatever transformers does
    ['Bloom', 'GPT-Neo']
    >>> len([f for f in SUPPORTED if f.name not in BY_ROUTING]), sorted(BY_ROUTING)
    (24, ['Falcon'])
    >>> model = build(family("Mistral"))
    >>> type(model).__name__, model.config.sliding_window, model.config.num_attention_heads
    ('MistralForCausalLM', 16, 4)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Callable

import torch
import transformers

LAYERS, HEADS, HIDDEN = 3, 4, 64
WINDOW = 16  # every sliding window here; the checks' prompts are longer
SLIDING_MIX = ["sliding_attention", "full_attention", "sliding_attention"]


def _llama_like(vocab: int, **kw) -> dict:
    """Config kwargs shared by the decoder families; ``initializer_range`` 0.2 gives peaked
    attention, so argmaxes are mostly unique and masks move the logits (no vacuous pass)."""
    base = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=512,
                initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    base.update(kw)
    return base


def _cfg(cls_name: str, **fixed) -> Callable[[int], object]:
    """A config factory for transformers' ``cls_name`` taking Llama-style kwargs plus ``fixed``."""
    def make(vocab: int):
        return getattr(transformers, cls_name)(**_llama_like(vocab, **fixed))
    return make


@dataclass(frozen=True)
class Family:
    """One architecture of the matrix.

    config: ``vocab -> config`` (tiny, random weights are drawn by ``build``).
    features: attention features exercised (GQA, sliding window, MoE, softcap, q/k norm...).
    layers/attn/out_proj/q_site: module names (tests may know them; the library may not):
      ``<base>.<layers>[i].<attn>`` is layer i's attention module, ``<attn>.<out_proj>``
      its output projection, ``<attn>.<q_site>`` the last module whose output is the query
      (a zero query stays zero under rotary and the norms chosen here).
    q_layout: where head h's query sits in q_site's output: ``split`` (columns h*d, fused qkv
      with the query first included), ``neox`` (per head [q|k|v] interleaved); a per-head
      norm's 4-d output is ``bshd`` [b, s, H, d] or ``bhsd`` [b, H, s, d].
    moe: the model routes tokens through experts (not visible in its attention module).
    refused: the family must be refused by ``check_supported`` (its attention bypasses the
      interface); then only ``config`` and ``model_class`` matter. ``None``: decided when
      this module is imported by what the installed transformers does
      (``routes_through_interface`` on the built model); such an entry names its modules as
      a supported one does, and ``FAMILIES`` holds it with ``refused`` True or False.
    """

    name: str
    model_class: str
    config: Callable[[int], object]
    features: tuple[str, ...] = ()
    notes: str = ""
    layers: str = "layers"
    attn: str = "self_attn"
    out_proj: str = "o_proj"
    q_site: str = "q_proj"
    q_layout: str = "split"
    moe: bool = False
    refused: bool | None = False


FAMILIES: list[Family] = [
    Family("Llama (MHA)", "LlamaForCausalLM", _cfg("LlamaConfig")),
    Family("Llama (GQA)", "LlamaForCausalLM", _cfg("LlamaConfig", num_key_value_heads=2), ("GQA",)),
    Family("Llama (MQA)", "LlamaForCausalLM", _cfg("LlamaConfig", num_key_value_heads=1), ("GQA",),
           notes="one KV head"),
    Family("Mistral", "MistralForCausalLM", _cfg("MistralConfig", num_key_value_heads=2, sliding_window=WINDOW),
           ("GQA", "sliding window"), notes=f"window {WINDOW} on every layer"),
    Family("Mixtral", "MixtralForCausalLM",
           _cfg("MixtralConfig", num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                sliding_window=WINDOW),
           ("GQA", "sliding window", "MoE"), moe=True, notes="4 experts, top-2"),
    Family("Qwen2", "Qwen2ForCausalLM", _cfg("Qwen2Config", num_key_value_heads=2), ("GQA",), notes="qkv bias"),
    Family("Qwen2 (sliding)", "Qwen2ForCausalLM",
           _cfg("Qwen2Config", num_key_value_heads=2, use_sliding_window=True, sliding_window=WINDOW,
                max_window_layers=1),
           ("GQA", "sliding window"), notes="layer 0 full, layers 1-2 sliding"),
    Family("Qwen2-MoE", "Qwen2MoeForCausalLM",
           _cfg("Qwen2MoeConfig", num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=32, shared_expert_intermediate_size=64),
           ("GQA", "MoE"), moe=True, notes="4 experts + shared expert"),
    Family("Qwen3", "Qwen3ForCausalLM", _cfg("Qwen3Config", num_key_value_heads=2, head_dim=16),
           ("GQA", "q/k norm"), q_site="q_norm", notes="per-head RMSNorm on q and k"),
    Family("Gemma", "GemmaForCausalLM", _cfg("GemmaConfig", num_key_value_heads=1, head_dim=16),
           ("GQA",), notes="scaled embeddings"),
    Family("Gemma2", "Gemma2ForCausalLM",
           _cfg("Gemma2Config", num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                sliding_window=WINDOW, layer_types=SLIDING_MIX, attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0, attn_implementation="eager"),
           ("GQA", "sliding window", "softcap"), notes="softcap (eager delegate); sliding/full/sliding"),
    Family("Gemma3", "Gemma3ForCausalLM",
           _cfg("Gemma3TextConfig", num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                sliding_window=WINDOW, layer_types=SLIDING_MIX),
           ("GQA", "sliding window", "q/k norm"), q_site="q_norm", q_layout="bhsd",
           notes="text model; sliding/full/sliding, two rotary bases"),
    Family("Phi3", "Phi3ForCausalLM", _cfg("Phi3Config", num_key_value_heads=2), ("GQA",),
           q_site="qkv_proj", notes="fused qkv_proj"),
    Family("Phi", "PhiForCausalLM", _cfg("PhiConfig"), (), out_proj="dense",
           notes="partial rotary, parallel block, dense"),
    Family("OLMo", "OlmoForCausalLM", _cfg("OlmoConfig", clip_qkv=8.0), (), notes="clip_qkv"),
    Family("OLMo2", "Olmo2ForCausalLM", _cfg("Olmo2Config", num_key_value_heads=2), ("GQA", "q/k norm"),
           q_site="q_norm", notes="q/k RMSNorm over all heads at once (hooked after the norm)"),
    Family("Cohere", "CohereForCausalLM", _cfg("CohereConfig", num_key_value_heads=2, use_qk_norm=True),
           ("GQA", "q/k norm"), q_site="q_norm", notes="per-head LayerNorm on q/k, interleaved rotary"),
    Family("StableLM", "StableLmForCausalLM", _cfg("StableLmConfig", num_key_value_heads=2),
           ("GQA",), notes="partial rotary"),
    Family("Granite", "GraniteForCausalLM",
           _cfg("GraniteConfig", num_key_value_heads=2, attention_multiplier=0.1, embedding_multiplier=2.0,
                residual_multiplier=0.5, logits_scaling=2.0),
           ("GQA",), notes="attention_multiplier as scaling"),
    Family("Starcoder2", "Starcoder2ForCausalLM",
           _cfg("Starcoder2Config", num_key_value_heads=2, sliding_window=WINDOW),
           ("GQA", "sliding window"), notes="biases, LayerNorm"),
    Family("SmolLM3", "SmolLM3ForCausalLM", _cfg("SmolLM3Config", num_key_value_heads=2, no_rope_layers=[1, 0, 1]),
           ("GQA",), notes="NoPE on layer 1"),
    Family("GPT-OSS", "GptOssForCausalLM",
           _cfg("GptOssConfig", num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                sliding_window=WINDOW, layer_types=SLIDING_MIX,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
           ("GQA", "sliding window", "MoE", "attention sinks"), moe=True,
           notes="learned per-head sink logit (s_aux); eager delegate (no SDPA); sliding/full/sliding"),
    Family("GPT-NeoX", "GPTNeoXForCausalLM",
           lambda vocab: transformers.GPTNeoXConfig(
               vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, max_position_embeddings=512, initializer_range=0.2, rotary_pct=0.5,
               bos_token_id=None, eos_token_id=None),
           (), attn="attention", out_proj="dense", q_site="query_key_value", q_layout="neox",
           notes="fused per-head qkv, dense, partial rotary"),
    Family("GPT-2", "GPT2LMHeadModel",
           lambda vocab: transformers.GPT2Config(
               vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=512,
               initializer_range=0.2, bos_token_id=None, eos_token_id=None),
           (), layers="h", attn="attn", out_proj="c_proj", q_site="c_attn",
           notes="learned positions, Conv1D c_attn/c_proj"),
    # ---- decided by behaviour: refused where its attention bypasses the interface (transformers
    # before 5.25: its own sdpa/eager code), in the matrix where it routes through it (5.25 on)
    Family("Falcon", "FalconForCausalLM",
           lambda vocab: transformers.FalconConfig(
               vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               max_position_embeddings=512, initializer_range=0.2, bos_token_id=None, eos_token_id=None),
           ("GQA",), layers="h", attn="self_attention", out_proj="dense", q_site="query_key_value", refused=None,
           notes="multi-query (one KV head), fused query_key_value, parallel block; status by behaviour: "
                 "refused where its attention bypasses the interface (transformers < 5.25)"),
    # ---- refused: their attention never reaches the interface
    Family("GPT-Neo", "GPTNeoForCausalLM",
           lambda vocab: transformers.GPTNeoConfig(
               vocab_size=vocab, hidden_size=HIDDEN, num_layers=2, num_heads=HEADS,
               attention_types=[[["global", "local"], 1]], window_size=WINDOW, max_position_embeddings=512,
               bos_token_id=None, eos_token_id=None),
           refused=True),
    Family("Bloom", "BloomForCausalLM",
           lambda vocab: transformers.BloomConfig(vocab_size=vocab, hidden_size=HIDDEN, n_layer=2, n_head=HEADS),
           refused=True),
]


def build(fam: Family, vocab: int = 128, seed: int = 0):
    """The family's tiny model, random weights drawn after ``torch.manual_seed(seed)``,
    fp32, eval mode."""
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_class)(fam.config(vocab))
    return model.to(torch.float32).eval()


@torch.no_grad()
def routes_through_interface(model) -> bool:
    """Whether ``model``'s attention calls transformers' AttentionInterface: one forward of 3
    tokens with a counting function registered under a fresh name (it hands each call to the
    sdpa entry). Independent of the library (``check_supported`` decides the same for itself).

    >>> routes_through_interface(build(family("Llama (MHA)"))), routes_through_interface(build(family("GPT-Neo")))
    (True, False)
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    calls = []

    def counting(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, *args, **kwargs)

    name, impl = f"families_routing_{uuid.uuid4().hex[:8]}", model.config._attn_implementation
    AttentionInterface.register(name, counting)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    try:
        model.config._attn_implementation = name
        model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    finally:
        model.config._attn_implementation = impl
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
    return bool(calls)


def decided(fam: Family) -> Family:
    """``fam`` with ``refused`` True or False: a ``refused=None`` entry is refused exactly when
    its tiny model's attention does not route through the interface."""
    if fam.refused is not None:
        return fam
    return replace(fam, refused=not routes_through_interface(build(fam)))


BY_ROUTING = {f.name for f in FAMILIES if f.refused is None}
FAMILIES = [decided(f) for f in FAMILIES]
SUPPORTED = [f for f in FAMILIES if not f.refused]
REFUSED = [f for f in FAMILIES if f.refused]
# The fast tier (`make test-fast`) checks these, one per feature of the matrix: plain MHA,
# GQA, sliding window, softcap, q/k norm, attention sinks, MoE, learned positions.
REPRESENTATIVE = ("Llama (GQA)", "Mistral", "Gemma2", "Gemma3", "GPT-OSS", "GPT-2")


def family(name: str) -> Family:
    """The entry of ``FAMILIES`` named ``name``."""
    return next(f for f in FAMILIES if f.name == name)


def matrix(families: list[Family]) -> list:
    """pytest parameters of ``families``, named by family; all but the representative ones
    are marked ``full`` (run by `make test`, skipped by `make test-fast`)."""
    import pytest

    return [pytest.param(f, id=f.name, marks=() if f.name in REPRESENTATIVE else pytest.mark.full) for f in families]

