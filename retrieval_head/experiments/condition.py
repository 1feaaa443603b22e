"""One condition of a needle run (``Condition``): what is masked, streamed or pressed, and
where its results go; shared by the masked test (``mask``), streaming (``compress``) and the
presses (``press``), none of which the others import for it.

Which cache a streaming condition runs on (``--cache``, ``route``): the masked simulation
(``HeadMask(mode="stream")`` on the scheduler's full cache, every key kept, the streamed ones
hidden) or the real head-wise cache (``engine.realrows.RealCache``: the streamed KV heads'
keys really dropped), whose rows are the simulation's token for token. The cache drops whole
KV heads: a KV head serving a kept query head stays full (``stream.full_kv_heads``) and its
streamed query heads are restricted by attention alone, so any condition gives the
simulation's answers on it, but only one whose kept set is whole KV heads (``--unit kv``, or
query heads kept or streamed a whole group at a time; keeping nothing always is) frees the
memory of every head it streams. ``--cache``: ``real`` (every streaming condition; refused
without one), ``masked`` (the simulation, the reference), ``auto`` (the default: real where
the kept set is whole KV heads, the simulation for the others). A press (``--press``) runs on
the real pressed cache under ``--cache real`` (``engine.realrows.RealPress``: each KV head
holds only the keys the press keeps; phase decode), else as the scheduler's masked
simulation. ``scheduled`` gives the scheduler each condition's mask or real cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.keep import mixed_heads
from ..core.mask import HeadMask, PressMask
from ..core.stream import full_kv_heads
from ..engine.realrows import RealCache, RealPress
from ..errors import UserError
from ..models.shape import ModelShape
from ..vocabulary import CACHE_CHOICES


@dataclass(frozen=True)
class Condition:
    """One masking condition of a run, and where its results go."""

    kind: str  # none | top | random (masking); keep_top | keep_random (streaming, compress.py); press (press.py)
    k: int
    mask: HeadMask | PressMask | None
    seed: int | None = None
    folder: str = ""
    unit: str = "query"  # query | kv: K counts query heads or whole KV-head groups
    kept: torch.Tensor | None = None  # streaming: bool [layers, units], the heads kept at full cache
    method: str | None = None  # the judge, a press: which method's heads (recorded only when set)

    def describe(self) -> dict:
        d = {"kind": self.kind, "k": self.k, "seed": self.seed, "unit": self.unit}
        if self.method is not None:
            d["method"] = self.method
        d.update(self.mask.describe() if self.mask is not None else {"heads": [], "mode": None, "phase": None})
        if self.kept is not None:
            d["kept"] = self.kept.nonzero().tolist()
        return d

    def label(self) -> str:
        if self.kind == "none":
            return "no heads masked"
        if self.kind == "press":
            return press_label(self)
        seed = f", seed {self.seed}" if self.seed is not None and "random" in self.kind else ""
        unit = " KV" if self.unit == "kv" else ""
        m = self.mask
        if m.mode == "stream":
            what = "every head streamed" if self.k == 0 else \
                f"{self.kind.replace('keep_', 'keep ')}-{self.k}{unit} full, rest streamed"
            return f"{what} ({m.sink}+{m.recent}, {m.phase}{seed})"
        return f"{self.kind}-{self.k}{unit} heads masked ({m.mode}, {m.phase}{seed})"


def press_label(c: Condition) -> str:
    """A press condition as the run's table says it.

    >>> from retrieval_head.core.mask import PressMask
    >>> from retrieval_head.presses.knorm import Knorm
    >>> press_label(Condition("press", 0, PressMask(Knorm(), 0.25), folder="M_press_knorm_b0.25"))
    'press knorm keeping 25% of the KV cache (decode)'
    """
    m = c.mask
    by = f" by {c.method} heads" if c.method else ""
    seed = f", seed {c.seed}" if c.seed is not None else ""
    return f"press {m.press.name}{by} keeping {m.budget:.0%} of the KV cache ({m.phase}{seed})"


def kv_keep(shape: ModelShape, c: Condition) -> torch.Tensor | None:
    """bool ``[layers, kv_heads]``: the keep set of a streaming condition whose kept heads
    are whole KV heads; None when not streaming, or when a KV head serves both kept and
    streamed query heads (the real cache runs it too, ``--cache real``, but frees less than
    it streams: ``--cache auto`` leaves it to the simulation)."""
    if getattr(c.mask, "mode", None) != "stream" or c.kept is None:
        return None
    kept = c.kept.bool()
    if c.unit == "kv":
        return kept
    return None if bool(mixed_heads(shape, kept).any()) else full_kv_heads(shape, kept)


def route(shape: ModelShape, conditions: list[Condition], choice: str) -> list[bool]:
    """Per condition: whether it runs on the real cache under ``--cache choice`` (``real``:
    every streaming condition and phase-decode press, refused without one, in one line before
    the model loads; ``auto``: the streaming ones whose kept set is whole KV heads)."""
    if choice not in CACHE_CHOICES:
        raise UserError(f"--cache must be one of {CACHE_CHOICES}, got {choice!r}")
    if choice == "masked":
        return [False] * len(conditions)
    if choice == "real":
        real = [getattr(c.mask, "mode", None) == "stream" and c.kept is not None or
                isinstance(c.mask, PressMask) and c.mask.phase == "decode" for c in conditions]
        if not any(real):
            raise UserError("--cache real is for streaming conditions and presses: add --keep_full K or --press NAME "
                            "--budget F (phase decode), or drop --cache")
        return real
    return [kv_keep(shape, c) is not None for c in conditions]


def scheduled(shape: ModelShape, conditions: list[Condition], choice: str
              ) -> list[HeadMask | PressMask | RealCache | RealPress | None]:
    """What the scheduler runs for each condition under ``--cache choice`` (``route``): its mask,
    or its real cache: a press's pressed cache, a streaming condition's kept set on the
    head-wise cache (as it is, of KV or query heads: ``HeadwiseCache`` takes both)."""
    real = route(shape, conditions, choice)
    return [(RealPress(c.mask) if isinstance(c.mask, PressMask) else RealCache(c.kept.bool(), c.mask)) if r
            else c.mask for c, r in zip(conditions, real)]
