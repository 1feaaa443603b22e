"""The eager oracles' one piece of plumbing: their own attention function registered in
transformers' attention interface for a block. Imports nothing of retrieval_head, so an oracle
built on it stays independent of the code it checks (tests/test_streaming.py,
tests/press_oracle.py)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def attention_as(model, name: str, attention):
    """``attention`` as ``model``'s attention function (with eager's mask) inside the block: an
    oracle's own eager attention, registered under ``name``; the model and transformers'
    registries as they were after."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    saved = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = saved
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
