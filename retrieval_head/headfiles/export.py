"""Head files out: a head grid written in another tool's format (``python -m
retrieval_head.heads export``). Holds ``keep_set`` (the top-K / threshold 0/1 grid),
``format_tsv`` (DuoAttention's TSV, as numpy writes it), ``render`` (the file text of each
format) and ``export`` (fit to the target's unit, select, render, write atomically);
reading head files, the formats and ``fit`` are ``foreign``.

duo (a folder: ``full_attention_heads.tsv`` + ``config.json``) and razor are per KV head,
qrhead and layers per query head; query-head scores go to KV heads by each group's max
before the selection. duo, razor and layers are keep-sets (``--top K`` or ``--threshold
T``); qrhead ranks every head.

Worked example: a 2-layer model with 4 query heads and 2 KV heads (group 2), its scores per
query head, exported as RazorAttention's two best KV heads and read back::

    >>> import tempfile
    >>> from retrieval_head.headfiles.foreign import read_head_file_any
    >>> d = Path(tempfile.mkdtemp())
    >>> src = HeadFile(torch.tensor([[0.1, 0.7, 0.2, 0.0], [0.0, 0.3, 0.9, 0.4]], dtype=torch.float64),
    ...                "query", "original")
    >>> done = export(src, "razor", d / "razor.json", top=2, kv_heads=2)
    >>> done.summary
    'kept 2 of 4 KV heads (2 layers x 2)'
    >>> print((d / "razor.json").read_text(), end="")
    {
      "0": [0],
      "1": [1]
    }
    >>> read_head_file_any(d / "razor.json").scores.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..store.files import dump_json, write_atomic
from .foreign import CONFIG_NAME, DUO_RECENT, DUO_SINK, FORMATS, TSV_NAME, HeadFile, fit, unit_noun
from .ranking import top_heads
from .validate import finite_number


def keep_set(scores: torch.Tensor, top: int | None = None, threshold: float | None = None,
             noun: str = "heads") -> torch.Tensor:
    """A float64 0/1 grid: the ``top`` highest-scoring units (``ranking``'s rule: ties
    layer-major, as ``heads top`` and the masking's top-K), or those scoring ``>= threshold``.

    >>> s = torch.tensor([[0.2, 0.9], [0.9, 0.1]], dtype=torch.float64)
    >>> keep_set(s, top=2).tolist(), keep_set(s, threshold=0.2).tolist()
    ([[0.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]])
    """
    if (top is None) == (threshold is None):
        raise UserError("a keep-set (duo, razor, layers) needs exactly one of --top K or --threshold T; "
                        + ("pass one of them" if top is None else "pass only one"))
    keep = torch.zeros_like(scores, dtype=torch.float64)
    if top is not None:
        n = scores.numel()
        if not 1 <= top <= n:
            raise UserError(f"--top {top} is not 1..{n} (the {scores.shape[0]} layers x {scores.shape[1]} {noun}); "
                            "pass a K in that range")
        for l, h, _ in top_heads(scores, top):
            keep[l, h] = 1.0
        return keep
    if not finite_number(threshold):
        raise UserError(f"--threshold {threshold} is not a finite number; pass one such as 0.1")
    keep[scores >= threshold] = 1.0
    if not keep.any():
        raise UserError(f"--threshold {threshold} keeps no head (the highest score is {float(scores.max()):g}); "
                        "lower it")
    return keep


def _ids(row: torch.Tensor) -> list[int]:
    return [i for i, x in enumerate(row.tolist()) if x]


def format_tsv(keep: torch.Tensor) -> str:
    """DuoAttention's TSV of a ``[layers, kv_heads]`` grid, as ``numpy.savetxt`` writes it
    (``%.18e``, tab-separated): ``numpy.loadtxt(path, dtype=float, delimiter="\\t")`` reads
    the grid back exactly (a 1-D array for one layer or one KV head, as numpy does).

    >>> format_tsv(torch.tensor([[1.0, 0.0]]))
    '1.000000000000000000e+00\\t0.000000000000000000e+00\\n'
    """
    return "".join("\t".join(f"{x:.18e}" for x in row) + "\n" for row in keep.tolist())


def render(to: str, scores: torch.Tensor, sink: int = DUO_SINK, recent: int = DUO_RECENT) -> dict[str, str]:
    """The file(s) of format ``to`` for a grid already in its unit (a 0/1 keep-set for duo,
    razor and layers; scores for qrhead): ``{name: text}``, ``name`` "" for the single file
    of the JSON formats.

    >>> keep = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    >>> render("razor", keep)[""], render("layers", keep)[""]
    ('{\\n  "0": [1],\\n  "1": [0, 1]\\n}\\n', '{\\n  "layer_0": [1],\\n  "layer_1": [0, 1]\\n}\\n')
    >>> render("qrhead", torch.tensor([[0.5, 0.0]], dtype=torch.float64))[""]
    '[\\n  ["0-0", 0.5],\\n  ["0-1", 0.0]\\n]\\n'
    """
    if to == "duo":
        return {TSV_NAME: format_tsv(scores), CONFIG_NAME: dump_json({"sink_size": sink, "recent_size": recent})}
    if to == "qrhead":
        pairs = [json.dumps([f"{l}-{h}", s]) for l, h, s in top_heads(scores)]
        return {"": "[\n" + ",\n".join(f"  {p}" for p in pairs) + "\n]\n"}
    key = (lambda l: str(l)) if to == "razor" else (lambda l: f"layer_{l}")
    rows = [f"  {json.dumps(key(l))}: {json.dumps(_ids(row))}" for l, row in enumerate(scores)]
    return {"": "{\n" + ",\n".join(rows) + "\n}\n"}


@dataclass(frozen=True)
class Export:
    """What ``export`` wrote: the paths, the grid in the target's unit, a one-line summary."""

    paths: tuple[Path, ...]
    grid: torch.Tensor
    summary: str


def export(src: HeadFile, to: str, out: Path | str, top: int | None = None, threshold: float | None = None,
           layers: int | None = None, heads: int | None = None, kv_heads: int | None = None,
           sink: int | None = None, recent: int | None = None, overwrite: bool = False) -> Export:
    """Write ``src`` as format ``to`` at ``out`` (a folder for duo), atomically, never over an
    existing file unless ``overwrite``.

    duo and razor are per KV head, qrhead and layers per query head (``fit`` converts:
    query-head scores become KV-head scores by the group max, before top-K / threshold).
    duo, razor and layers are keep-sets: exactly one of ``top`` / ``threshold``; qrhead
    ranks every head by score (ties layer-major) and takes neither. ``sink``/``recent``
    (duo only; default DuoAttention's 64/256) go into ``config.json``.
    """
    if to not in FORMATS or to == "original":
        raise UserError(f"--to {to!r}: export writes duo, razor, qrhead or layers")
    out = Path(out)
    _check_options(to, layers, heads, kv_heads, sink, recent)
    unit = FORMATS[to][1]
    grid = fit(src, unit, layers, heads, kv_heads, hint="pass --layers/--heads/--kv_heads N for the model it is for")
    noun = unit_noun(unit)
    if to == "qrhead":
        if top is not None or threshold is not None:
            raise UserError("--to qrhead writes every head ranked by its score; --top/--threshold are for the "
                            "keep-sets (duo, razor, layers)")
        data = grid
        summary = f"{grid.numel()} {noun} ranked"
    else:
        data = keep_set(grid, top, threshold, noun)
        summary = f"kept {int(data.sum())} of {data.numel()} {noun} ({data.shape[0]} layers x {data.shape[1]})"
    files = render(to, data, DUO_SINK if sink is None else sink, DUO_RECENT if recent is None else recent)
    paths = _out_paths(to, out, files)
    taken = [p for p in paths if p.exists()]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} exists; pass --overwrite to replace it, or another --out")
    try:
        for p, text in zip(paths, files.values()):
            write_atomic(p, text)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}; check the folder exists and is writable") from None
    return Export(paths, data, summary)


def _check_options(to: str, layers: int | None, heads: int | None, kv_heads: int | None, sink: int | None,
                   recent: int | None) -> None:
    """``export``'s counts and DuoAttention sizes, checked before anything is read or written."""
    if to != "duo" and (sink is not None or recent is not None):
        raise UserError(f"--sink/--recent are DuoAttention's config.json; --to {to} has no place for them")
    for name, v in (("--sink", sink), ("--recent", recent)):
        if v is not None and v < 0:
            raise UserError(f"{name} {v} is not a number of tokens; pass a non-negative integer")
    for name, v in (("--layers", layers), ("--heads", heads), ("--kv_heads", kv_heads)):
        if v is not None and v < 1:
            raise UserError(f"{name} {v} is not a count; pass a positive integer")


def _out_paths(to: str, out: Path, names) -> tuple[Path, ...]:
    """Where ``export`` writes the files ``names`` of format ``to`` at ``out`` (a folder for duo)."""
    if to == "duo":
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; --to duo writes a folder ({TSV_NAME} + {CONFIG_NAME})")
        return tuple(out / name for name in names)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; --to {to} writes one file: pass its path")
    return (out,)
