"""One condition of a needle run (``Condition``): what is masked, streamed or pressed, and
where its results go; shared by the masked test (``mask``), streaming (``compress``) and the
presses (``press``), none of which the others import for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.mask import HeadMask, PressMask


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
