"""How to load a model (``ModelSpec``): one field per command-line option, importable
without torch so that every ``--help`` answers at once (``loading`` does the loading).

    >>> ModelSpec().dtype, ModelSpec().device
    ('auto', 'auto')
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option


@dataclass(frozen=True)
class ModelSpec:
    """How to load a model; one field per CLI option."""

    model_path: str | None = option(None, "hub id, local folder or embedded:<key>; none: the embedded "
                                          "SmolLM2-135M-Instruct")
    revision: str | None = option(None, "hub revision (branch, tag or commit)")
    dtype: str = option("auto", "auto: float32 on CPU, the checkpoint's dtype on GPU",
                        choices=("auto", "float32", "bfloat16", "float16"))
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    device_map: str | None = option(None, "e.g. auto: shard layers over GPUs (accelerate)")
    attn_implementation: str | None = option(None, "prefill backend: sdpa, eager, flash_attention_2 "
                                                   "(pip install .[flash]); none: the model's own")
    trust_remote_code: bool = option(False, "run the model repository's own code (off unless asked)")
