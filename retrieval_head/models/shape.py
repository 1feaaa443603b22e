"""The model facts every stage needs, read once from the (text) config.

Layers, query heads, KV heads, head size, positions, which layers slide and their window,
the attention logit softcap and whether the model has attention sinks: nothing else in the
package reads ``model.config`` for these, and nothing dispatches on model names.

Worked example (a Mistral-style config: every layer slides; Gemma-style configs name each
layer's type in ``layer_types`` instead)::

    >>> from transformers import MistralConfig
    >>> s = ModelShape.from_config(MistralConfig(num_hidden_layers=2, num_attention_heads=8,
    ...                                          num_key_value_heads=2, hidden_size=64, sliding_window=16))
    >>> s.num_layers, s.num_heads, s.num_kv_heads, s.group, s.head_dim, s.windows
    (2, 8, 2, 4, 8, (16, 16))
    >>> s.kv_bytes_per_token(4)       # 2 (k, v) x 2 layers x 2 KV heads x 8 dims x 4 bytes
    256
"""

from __future__ import annotations

from dataclasses import dataclass

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class ModelShape:
    """One model's attention geometry (see module docstring).

    windows: per layer, its sliding window (keys a query sees, itself included) or None.
    sinks: the attention modules carry learned sink logits (GPT-OSS); None when only the
           config was read (the config does not say).
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None
    windows: tuple[int | None, ...]
    softcap: float | None = None
    sinks: bool | None = None

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        layers = _first(cfg, ("num_hidden_layers", "n_layer", "num_layers"))
        heads = _first(cfg, ("num_attention_heads", "n_head", "num_heads"))
        kv = getattr(cfg, "num_key_value_heads", None) or heads  # MHA configs omit it
        head_dim = getattr(cfg, "head_dim", None) or _first(cfg, ("hidden_size", "n_embd")) // heads
        return cls(num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                   max_positions=next((v for k in POSITION_KEYS if isinstance(v := getattr(cfg, k, None), int)
                                       and v > 0), None),
                   windows=_windows(cfg, layers), softcap=getattr(cfg, "attn_logit_softcapping", None))

    @classmethod
    def of(cls, model) -> "ModelShape":
        """From a loaded model: its config, plus what only the modules tell (sinks)."""
        shape = cls.from_config(model.config)
        sinks = any(getattr(m, "sinks", None) is not None for m in model.modules())
        return cls(**{**shape.__dict__, "sinks": sinks})

    @property
    def group(self) -> int:
        """Query heads per KV head (1 for MHA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def grid(self) -> tuple[int, int]:
        """``(layers, heads)``: the shape of every per-head score and mask."""
        return (self.num_layers, self.num_heads)

    def kv_bytes_per_token(self, element_size: int) -> int:
        """Bytes one token adds to a full KV cache (keys and values of every layer)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element_size

    def record(self) -> dict:
        """The manifest's record of it."""
        return dict(self.__dict__, windows=list(self.windows))


def _first(cfg, keys: tuple[str, ...]) -> int:
    for k in keys:
        v = getattr(cfg, k, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"{type(cfg).__name__} states none of {', '.join(keys)}")


def _windows(cfg, layers: int) -> tuple[int | None, ...]:
    """Each layer's window: ``layer_types`` names the sliding layers where the config has it
    (Gemma2/3, Qwen2, GPT-OSS); otherwise ``sliding_window`` applies to every layer (Mistral,
    Mixtral, Starcoder2) unless ``use_sliding_window`` turns it off."""
    w = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not w:
        return (None,) * layers
    if types is not None:
        return tuple(w if t == "sliding_attention" else None for t in types)
    if getattr(cfg, "use_sliding_window", True) is False:
        return (None,) * layers
    return (w,) * layers
