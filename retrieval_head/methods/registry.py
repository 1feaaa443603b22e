"""The head-identification methods, side by side: names, files, and what each needs.

Every method writes the original's format, ``{"layer-head": [per-trial score]}``, so every
reader of head-score files (``heads top|heatmap|compare``, ``--head_score``, masking, the
judge) takes any of them unchanged; the manifest beside it names the method and its
parameters.

=============  ==================================================  =================  ================
method         score of head (l, h) in one trial                   data               module
=============  ==================================================  =================  ================
retrieval      copies of needle tokens by its argmax while          needle trials      scoring
               decoding (Wu et al. 2024, arXiv 2404.15574)          (passing)
query-focus    question rows' softmax mass on the needle span       needle trials      scores_focus
               in the prefill (QRHead-style)                        (all)
needle-mass    softmax mass on the needle span per decode step      needle trials      scores_focus
               of the answer (HeadKV-R2-style)                      (passing)
induction      mass on the token after the previous occurrence      none (random       scores_repeat
               (RazorAttention, TransformerLens)                    repeated tokens)
echo           mass on the previous occurrence itself               none               scores_repeat
=============  ==================================================  =================  ================

    >>> score_path(Path("head_score"), "M", "retrieval"), score_path(Path("head_score"), "M", "echo")
    (PosixPath('head_score/M.json'), PosixPath('head_score/M.echo.json'))
    >>> method_of(Path("head_score/Llama-3.1-8B.query-focus.json")), method_of(Path("x/Llama-3.1-8B.json"))
    ('query-focus', 'Llama-3.1-8B')
"""

from __future__ import annotations

from pathlib import Path

METHODS = ("retrieval", "query-focus", "needle-mass", "induction", "echo")
HAYSTACK = ("retrieval", "query-focus", "needle-mass")  # one sweep of needle trials gives these
REPEAT = ("induction", "echo")  # one forward pass over repeated random tokens gives these


def score_path(out: Path, name: str, method: str) -> Path:
    """``<model>.json`` for retrieval (as ever), ``<model>.<method>.json`` for the others."""
    return out / (f"{name}.json" if method == "retrieval" else f"{name}.{method}.json")


def method_of(path: Path) -> str:
    """The method a head-score file's name says (``<model>.<method>.json``); for any other
    name its stem (``<model>.json`` is retrieval's, but the name cannot tell)."""
    stem = Path(path).name.removesuffix(".json")
    for m in METHODS:
        if stem.endswith("." + m):
            return m
    return stem
