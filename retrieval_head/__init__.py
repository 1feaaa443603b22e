"""retrieval-head: find the attention heads that copy facts out of long contexts, and
prove what they do by masking them (Wu et al. 2024, arXiv 2404.15574).

The subpackages, top to bottom; each imports only from those below it (the contract is
``[tool.importlinter]`` in pyproject.toml, checked by ``tests/test_layout.py``)::

  cli          the commands: detect, mask, compress, judge, heads (+ stability), plot, generate; one error boundary
  experiments  detect, mask (condition: which cache a streaming condition runs on), compress, judge,
               adaptive (--until_stable); sweep: the plan both share
  analysis     stability (the trial bootstrap), convergence (top-K as trials accrue)
  plots        niah: needle-test heatmaps in the original's look
  methods      the identification methods, each a small object of the presses' shape (method: the
               contract; registry: by name, make_method): retrieval, focus, induction (+ repeat's pass)
  engine       the speed levers, changing no result: scheduler, prefix reuse, batching, shards;
               reads: what the scheduler reads on a trial as the methods ask; realrows (the cache as a
               lever: conditions on a real compressed KV cache)
  core         the algorithm: attend (all attention arithmetic), hook + intervene (scoped),
               probe, mask, stream, tap, decode, scoring; reference: one trial on one screen;
               keep + headwise + headwise_attend: a head-wise KV cache (streamed heads really cut);
               pressed: a press's KV cache (each KV head only the keys the press keeps)
  inputs       haystack text and needles, prompts in token space, the grid, the RULER-style tasks
  headfiles    the original's head_score JSON, foreign formats in and out, ranking (the one top-K rule)
  store        atomic files, the trial log, the run manifest
  models       loading any HF causal LM, the embedded models, ModelShape (facts from the config)
  options, errors   settings -> command-line options (one source of defaults); UserError

Importing the package imports no torch and no transformers: each name below is imported from
its module on first use (PEP 562 ``__getattr__``), so a command's ``--help`` stays fast.

Start at ``core/reference.py``: one detection trial and one masked trial, written plainly; the
experiments run the same arithmetic through the engine, and tests hold them equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Each public name -> (its module, its name there), imported on first use. The imports under
# TYPE_CHECKING say the same for readers, type checkers and the API reference (griffe);
# tests/test_package_import.py holds the two equal.
_LAZY = {
    "ArgmaxProbe": (".core.probe", "ArgmaxProbe"),
    "HeadMask": (".core.mask", "HeadMask"),
    "intervene": (".core.intervene", "intervene"),
    "HeadwiseCache": (".core.headwise", "HeadwiseCache"),
    "HeadwiseAttention": (".core.headwise_attend", "HeadwiseAttention"),
    "PressedCache": (".core.pressed", "PressedCache"),
    "headwise_generate": (".core.headwise_attend", "generate"),
    "keep_top": (".core.keep", "keep_top"),
    "UnsupportedModelError": (".errors", "UnsupportedModelError"),
    "UserError": (".errors", "UserError"),
    "DetectionResult": (".experiments.detect", "DetectionResult"),
    "DetectSettings": (".experiments.detect", "DetectSettings"),
    "detect": (".experiments.detect", "detect"),
    "NiahSettings": (".experiments.mask", "NiahSettings"),
    "make_conditions": (".experiments.mask", "make_conditions"),
    "run_niah": (".experiments.mask", "run_niah"),
    "load_head_scores": (".headfiles.load", "load_head_scores"),
    "top_heads": (".headfiles.ranking", "top_heads"),
    "ModelSpec": (".models.loading", "ModelSpec"),
    "load_model": (".models.loading", "load_model"),
    "ModelShape": (".models.shape", "ModelShape"),
}

if TYPE_CHECKING:
    from .core.headwise import HeadwiseCache
    from .core.headwise_attend import HeadwiseAttention
    from .core.headwise_attend import generate as headwise_generate
    from .core.intervene import intervene
    from .core.keep import keep_top
    from .core.mask import HeadMask
    from .core.pressed import PressedCache
    from .core.probe import ArgmaxProbe
    from .errors import UnsupportedModelError, UserError
    from .experiments.detect import DetectionResult, DetectSettings, detect
    from .experiments.mask import NiahSettings, make_conditions, run_niah
    from .headfiles.load import load_head_scores
    from .headfiles.ranking import top_heads
    from .models.loading import ModelSpec, load_model
    from .models.shape import ModelShape

__all__ = [
    "ArgmaxProbe", "HeadMask", "intervene", "DetectionResult", "DetectSettings", "detect", "UnsupportedModelError",
    "UserError", "ModelSpec", "load_model", "NiahSettings", "make_conditions", "run_niah", "load_head_scores",
    "top_heads", "ModelShape", "HeadwiseCache", "HeadwiseAttention", "headwise_generate", "keep_top",
    "PressedCache",
]


def __getattr__(name: str):
    """A public name, imported from its module on first use (then held here)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
