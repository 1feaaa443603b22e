"""The head-identification methods, side by side: what each needs, how it counts, its file.

Every method writes the original's format, ``{"layer-head": [per-trial score]}``, so every
reader of head-score files (``heads top|heatmap|compare``, ``--head_score``, masking, the
judge) takes any of them unchanged; the manifest beside it names the method and its
parameters. ``METHODS`` is the one table the commands read: which methods exist (and their
order), which data each needs, which trials count, where a trial keeps its scores and which
file it writes. A new method is a new ``Method`` row here and the module that computes it.

=============  ==================================================  =================  ==============
method         score of head (l, h) in one trial                   data (counted)     module
=============  ==================================================  =================  ==============
retrieval      copies of needle tokens by its argmax while          needle trials      core.scoring
               decoding (Wu et al. 2024, arXiv 2404.15574)          (passing)
query-focus    question rows' softmax mass on the needle span       needle trials      methods.focus
               in the prefill (QRHead-style)                        (all)
needle-mass    softmax mass on the needle span per decode step      needle trials      methods.focus
               of the answer (HeadKV-R2-style)                      (passing)
induction      mass on the token after the previous occurrence      repeated random    methods.repeat
               (RazorAttention, TransformerLens)                    tokens (seeds)
echo           mass on the previous occurrence itself               repeated random    methods.repeat
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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

NEEDLE, REPEAT = "needle", "repeat"  # the data a method needs: the detection sweep's trials, or repeated tokens
PASSING, ALL = "passing", "all"      # which needle trials count: those whose answer passes the ROUGE check, or all
RETRIEVAL = "retrieval"              # the default method: its file is <model>.json, its manifest the sweep's


@dataclass(frozen=True)
class Method:
    """One head-identification method.

    name:     as ``--method`` spells it, and in its file name (``<model>.<name>.json``).
    data:     ``NEEDLE`` (the detection sweep's needle trials) or ``REPEAT`` (repeated
              random tokens, no haystack).
    counts:   needle methods: ``PASSING`` or ``ALL`` trials count; repeat methods: ``ALL``
              (each seed is a trial).
    field:    needle methods: the trial record's field of its per-trial ``[layers][heads]``
              scores; None for repeat methods (they keep no trial log).
    row:      needle methods other than retrieval: the scheduler row's (``Decoded``)
              attribute the trial's scores come from; None where none.
    question: it reads the question's tokens (found by the tokenizer's character offsets,
              checked before the weights load).
    reads:    the query rows (needle) or key (repeat) its mass is read at, as its manifest
              records it.
    module:   where its score is computed.
    """

    name: str
    data: str
    counts: str
    field: str | None
    row: str | None
    question: bool
    reads: str
    module: str

    def file_name(self, model: str) -> str:
        """``<model>.json`` for retrieval (as ever), ``<model>.<method>.json`` for the others."""
        return f"{model}.json" if self.name == RETRIEVAL else f"{model}.{self.name}.json"


METHODS = MappingProxyType({m.name: m for m in (
    Method(RETRIEVAL, NEEDLE, PASSING, "head_scores", None, False, "every decode step's argmax", "core.scoring"),
    Method("query-focus", NEEDLE, ALL, "query_focus", "tapped", True, "the question's tokens, prefill",
           "methods.focus"),
    Method("needle-mass", NEEDLE, PASSING, "needle_mass", "span_mass", False, "every decode step of the answer",
           "methods.focus"),
    Method("induction", REPEAT, ALL, None, None, False, "p - period + 1", "methods.repeat"),
    Method("echo", REPEAT, ALL, None, None, False, "p - period", "methods.repeat"),
)})


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
