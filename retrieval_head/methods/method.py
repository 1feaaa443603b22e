"""What a head-identification method is: a small object of the presses' shape.

A method is a frozen dataclass of its parameters (one file per method or family:
``retrieval.py``, ``focus.py``, ``induction.py``) that says

- what data it needs (``data``): ``NEEDLE``, the detection sweep's needle trials, or
  ``REPEAT``, one forward pass over repeated random tokens;
- for a needle method: which reads it needs on a trial (``reads()``: the argmax probe, a
  prefill tap, the needle-span mass; ``engine.reads``, installed by the scheduler, which
  knows no method), how it scores one decoded row into a float ``[layers, heads]`` tensor
  (``score_row``), which trials count (``counts``: ``PASSING`` or ``ALL``) and the trial
  record's field of its scores (``field``);
- which files it writes (``outputs``: ``<model>.<name>.json`` and its manifest) and what
  goes in each (``counters``), and what its manifest records (``parameters``).

Its parameters come from the detection settings by name (a field's ``setting`` metadata
names another option: ``from_settings``). ``registry.make_method(name, **params)`` makes one
by name; adding a method is its file and one registry line.

    >>> from pathlib import Path
    >>> from retrieval_head.methods.focus import QueryFocus
    >>> QueryFocus().outputs(Path("out"), "M")
    {'scores': PosixPath('out/M.query-focus.json'), 'manifest': PosixPath('out/M.query-focus.manifest.json')}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

NEEDLE, REPEAT = "needle", "repeat"  # the data a method needs: the detection sweep's trials, or repeated tokens
PASSING, ALL = "passing", "all"  # which needle trials count: those whose answer passes the ROUGE check, or all
RETRIEVAL = "retrieval"  # the default method: its file is <model>.json, its manifest the sweep's


def setting(default, name: str):
    """A method parameter read from the detection settings' option ``name`` (``from_settings``)."""
    return dataclasses.field(default=default, metadata={"setting": name})


@dataclass(frozen=True)
class Method:
    """One head-identification method (module docstring). Class attributes:

    name:     as ``--method`` spells it, and in its file name (``<model>.<name>.json``).
    data:     ``NEEDLE`` or ``REPEAT``.
    counts:   needle methods: ``PASSING`` or ``ALL`` trials count; repeat methods: ``ALL``
              (each seed is a trial).
    field:    needle methods: the trial record's field of its per-trial ``[layers][heads]``
              scores; None for repeat methods (they keep no trial log).
    question: it reads the question's tokens (found by the tokenizer's character offsets,
              checked before the weights load: ``check``).
    read_at:  the query rows (needle) or key (repeat) its mass is read at, as its manifest
              records it.
    """

    name: ClassVar[str]
    data: ClassVar[str] = NEEDLE
    counts: ClassVar[str] = PASSING
    field: ClassVar[str | None] = None
    question: ClassVar[bool] = False
    read_at: ClassVar[str] = ""

    @classmethod
    def from_settings(cls, settings) -> "Method":
        """The method with its parameters read from ``settings`` (``DetectSettings``): each
        field from the option of its name, or the one its ``setting`` metadata names."""
        return cls(**{f.name: getattr(settings, f.metadata.get("setting", f.name)) for f in dataclasses.fields(cls)})

    def file_name(self, model: str) -> str:
        """``<model>.<method>.json`` (retrieval's: ``<model>.json``, as ever)."""
        return f"{model}.{self.name}.json"

    def outputs(self, out: Path, model: str) -> dict[str, Path]:
        """The files it writes for ``model`` in ``out``: ``scores``, its head-score file, and
        ``manifest`` (none for a method whose manifest is the sweep's)."""
        return {"scores": out / self.file_name(model), "manifest": out / f"{model}.{self.name}.manifest.json"}

    def check(self, prompt) -> None:
        """Refuse, before the weights load, a prompt it cannot read (a ``UserError``)."""

    def parameters(self, settings, tokenizer=None, vocab: int | None = None) -> dict:
        """What defines its scores besides the model (recorded in its manifest)."""
        raise NotImplementedError


@dataclass(frozen=True)
class NeedleMethod(Method):
    """A method of the detection sweep's needle trials."""

    def reads(self) -> tuple:
        """The reads (``engine.reads``) it needs on a trial, by the scheduler."""
        raise NotImplementedError

    def score_row(self, row) -> "torch.Tensor":  # noqa: F821 (torch: only where a row exists)
        """Its scores of one decoded row (``scheduler.Decoded``): float ``[layers, heads]``."""
        raise NotImplementedError

    def counters(self, result, info: dict) -> dict[str, dict[str, list[float]]]:
        """What each of its ``outputs`` holds, ``{"layer-head": [score per counted trial]}``."""
        return {"scores": result.head_counter(self.name)}

    def parameters(self, settings, tokenizer=None, vocab: int | None = None) -> dict:
        trials = "all" if self.counts == ALL else f"passing (ROUGE-1 recall > {settings.rouge_threshold})"
        return dict(
            span="the needle's answer span",
            grid="the detection sweep's trials (see the manifest's config)",
            rows=self.read_at,
            trials=trials,
        )
