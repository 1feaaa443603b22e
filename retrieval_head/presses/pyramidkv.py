"""PyramidKV (Cai et al. 2024): SnapKV's scores, with more keys for the lower layers and
fewer for the higher, on a linear schedule.

Follows kvpress/presses/pyramidkv_press.py (kvpress 0.5.5, ``PyramidKVPress.get_layer_budget``,
itself from KVCache-Factory's pyramidkv_utils.py): with ``B`` the keys a layer keeps on average,
the top layer keeps ``B / beta`` (``beta`` 20, kvpress's default), layer 0 keeps
``2 B - B / beta``, the layers between fall on the line between, so their mean is ``B``; where
layer 0 would keep more than there is, it keeps everything and the top layer ``2 B - n``.
Inside a layer it is ``SnapKV`` (window 64, kernel 5).

Where we differ, and why: our shares are fractions of the keys, set before the context's length
is known (``layer_shares`` has no ``n``), so the cap is at the whole cache (kvpress: ``n -
window`` keys), and there is no fall-back to SnapKV's even split when the top layer's keys would
be fewer than the window (kvpress's ``min_num >= window_size`` check needs ``n``); such a layer
keeps the window's most recent keys (``SnapKV``). Each row keeps ``round(share * kv * real)``
keys of a layer (kvpress rounds each layer's count).

Worked example: 4 layers at a budget of 0.2, beta 4; at 0.8 the bottom layer is capped at 1::

    >>> from retrieval_head.models.shape import ModelShape
    >>> shape = ModelShape(4, 2, 1, 8, None, (None,) * 4)  # layers, heads, KV heads, head_dim
    >>> [round(s, 4) for s in PyramidKV(beta=4).layer_shares(shape, 0.2)]
    [0.35, 0.25, 0.15, 0.05]
    >>> [round(s, 4) for s in PyramidKV(beta=4).layer_shares(shape, 0.8)]
    [1.0, 0.8667, 0.7333, 0.6]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import UserError
from ..models.shape import ModelShape
from .choose import check_budget
from .snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    """PyramidKV's press (module docstring): SnapKV in each layer, pyramid layer shares."""

    beta: float = 20
    name: ClassVar[str] = "pyramidkv"

    def __post_init__(self):
        super().__post_init__()
        if self.beta < 1:
            raise UserError(f"{self.name}: beta must be >= 1, got {self.beta}")

    def layer_shares(self, shape: ModelShape, budget: float) -> list[float]:
        budget, layers = check_budget(budget), shape.num_layers
        if layers == 1:
            return [budget]
        low = budget / self.beta
        high = 2 * budget - low
        if high > 1.0:
            high, low = 1.0, 2 * budget - 1.0
        step = (high - low) / (layers - 1)
        return [high - layer * step for layer in range(layers)]
