"""Every head-identification method by name, and ``make_method``: a method from the command
line's ``--method NAME`` and its parameters (``method.Method``: one small object per method,
of the presses' shape; the table below says what each reads).

Every method writes the original's format, ``{"layer-head": [per-trial score]}``, so every
reader of head-score files (``heads top|heatmap|compare``, ``--head_score``, masking, the
judge) takes any of them unchanged; the manifest beside it names the method and its
parameters. ``METHODS`` (each method made with its defaults) is the table the commands read:
which methods exist (and their order), which data each needs, which trials count, where a
trial keeps its scores and which file it writes. A new method is its module (a ``Method``
dataclass) and one line in ``METHODS`` here (docs/methods.md).

=============  ==================================================  =================  ==============
method         score of head (l, h) in one trial                   data (counted)     module
=============  ==================================================  =================  ==============
retrieval      copies of needle tokens by its argmax while          needle trials      methods.retrieval
               decoding (Wu et al. 2024, arXiv 2404.15574)          (passing)
query-focus    question rows' softmax mass on the needle span       needle trials      methods.focus
               in the prefill (QRHead-style)                        (all)
needle-mass    softmax mass on the needle span per decode step      needle trials      methods.focus
               of the answer (HeadKV-R2-style)                      (passing)
induction      mass on the token after the previous occurrence      repeated random    methods.induction
               (RazorAttention, TransformerLens)                    tokens (seeds)
echo           mass on the previous occurrence itself               repeated random    methods.induction
                                                                    tokens (seeds)
=============  ==================================================  =================  ==============

One sweep of needle trials gives retrieval, query-focus and needle-mass together (the
probe runs in every trial, so the retrieval file is written whenever the sweep runs); one
forward pass over repeated random tokens gives induction and echo.

    >>> list(METHODS), [m for m in METHODS if METHODS[m].data == NEEDLE]
    (['retrieval', 'query-focus', 'needle-mass', 'induction', 'echo'], ['retrieval', 'query-focus', 'needle-mass'])
    >>> METHODS["query-focus"].counts, METHODS["query-focus"].field, METHODS["echo"].field
    ('all', 'query_focus', None)
    >>> score_path(Path("head_score"), "M", "retrieval"), score_path(Path("head_score"), "M", "echo")
    (PosixPath('head_score/M.json'), PosixPath('head_score/M.echo.json'))
    >>> method_of(Path("head_score/Llama-3.1-8B.query-focus.json")), method_of(Path("x/Llama-3.1-8B.json"))
    ('query-focus', 'Llama-3.1-8B')
    >>> make_method("induction", period=16)
    Induction(period=16, repeats=4, seeds=(0, 1, 2))
    >>> try:
    ...     make_method("retrieval", period=16)
    ... except UserError as e:
    ...     print(e)
    --method retrieval has no parameter period (it has score)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

from ..errors import UserError
from .focus import NeedleMass, QueryFocus
from .induction import Echo, Induction
from .method import ALL, NEEDLE, PASSING, REPEAT, RETRIEVAL, Method  # noqa: F401 (the names the commands read)
from .retrieval import Retrieval

# every method, in the order the commands list and run them: one line each
METHODS = MappingProxyType({cls.name: cls() for cls in (Retrieval, QueryFocus, NeedleMass, Induction, Echo)})


def make_method(name: str, **params) -> Method:
    """The method ``name`` with ``params`` (its dataclass fields); every mistake is a ``UserError``."""
    if name not in METHODS:
        raise UserError(f"no method {name!r}: choose one of {', '.join(METHODS)}")
    cls = type(METHODS[name])
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UserError(f"--method {name} has no parameter {', '.join(unknown)} (it has "
                        f"{', '.join(sorted(fields)) or 'none'})")
    return cls(**params)


def chosen(settings, names: tuple[str, ...]) -> tuple[Method, ...]:
    """The methods ``names``, each with its parameters from the detection settings
    (``Method.from_settings``), in ``names``' order."""
    return tuple(type(METHODS[n]).from_settings(settings) for n in names)


def repeat_keys() -> dict[str, int]:
    """Every repeat method's key (``induction.RepeatMethod``): the columns of the one pass."""
    return {n: m.key for n, m in METHODS.items() if m.data == REPEAT}


def of_data(methods: tuple[str, ...], data: str) -> tuple[str, ...]:
    """The methods of ``methods`` that need ``data`` (``NEEDLE`` or ``REPEAT``), in their order.

    >>> of_data(("retrieval", "echo", "needle-mass"), NEEDLE), of_data(("retrieval", "echo"), REPEAT)
    (('retrieval', 'needle-mass'), ('echo',))
    """
    return tuple(m for m in methods if METHODS[m].data == data)


def score_path(out: Path, name: str, method: str) -> Path:
    """Where ``method``'s head-score file for model ``name`` goes in ``out``."""
    return out / METHODS[method].file_name(name)


def method_of(path: Path) -> str:
    """The method a head-score file's name says (``<model>.<method>.json``); for any other
    name its stem (``<model>.json`` is retrieval's, but the name cannot tell)."""
    stem = Path(path).name.removesuffix(".json")
    for m in METHODS:
        if stem.endswith("." + m):
            return m
    return stem


KEPT = {"duo": "DuoAttention pattern (1 = full attention, 0 = streaming)",
        "razor": "RazorAttention keep set (1 = kept)", "qrhead": "QRHead score (unlisted: 0)",
        "layers": "per-layer head list (1 = listed)"}
PER_KV = {".kv_max": ", max over each KV head's query heads", ".kv_mean": ", mean over each KV head's query heads"}


def scored_by(path: Path, file_format: str = "original") -> str:
    """What a head file's scores are, as its figure says: another tool's format by its
    name; an original-format file by the method its name says (``<model>.<method>.json``,
    ``.kv_max`` / ``.kv_mean`` per KV head, ``.distractor`` the copies from a task's
    distractors), a plain ``<model>.json`` being the retrieval score (the original's file).

    >>> for name in ("M.query-focus.json", "M.echo.json", "M_vt.distractor.json", "M.kv_max.json"):
    ...     print(scored_by(Path(name)))
    query-focus score (mean over trials)
    echo score (mean over seeds)
    retrieval score from distractors (mean over trials)
    retrieval score (mean over trials, max over each KV head's query heads)
    >>> scored_by(Path("M.json"), "razor")
    'RazorAttention keep set (1 = kept)'
    """
    if file_format in KEPT:
        return KEPT[file_format]
    stem, how = Path(path).name.removesuffix(".json"), ""
    for suffix, said in PER_KV.items():
        if stem.endswith(suffix):
            stem, how = stem.removesuffix(suffix), said
    distractor = stem.endswith(".distractor")
    m = method_of(Path(stem.removesuffix(".distractor") + ".json"))
    m = m if m in METHODS else RETRIEVAL
    over = "seeds" if METHODS[m].data == REPEAT else "trials"
    return f"{m} score{' from distractors' if distractor else ''} (mean over {over}{how})"
