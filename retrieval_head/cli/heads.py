"""Retrieval-head analysis for notebooks and the shell: ranked tables, heatmaps, comparisons.

Worked example: two 2 x 2 score grids that agree on the best head but not the second::

    >>> import torch
    >>> a = torch.tensor([[0.9, 0.1], [0.5, 0.0]])
    >>> b = torch.tensor([[0.8, 0.6], [0.2, 0.0]])
    >>> r = compare(a, b, k=2)
    >>> r["overlap"], r["jaccard"], r["shared"], round(r["spearman"], 3)
    (1, 0.333, [(0, 0)], 0.8)

From the shell (``retrieval-head heads`` = ``python -m retrieval_head.heads``)::

    python -m retrieval_head.heads top head_score/llama-2-7b-80k.json --top 10
    python -m retrieval_head.heads heatmap head_score/llama-2-7b-80k.json   # llama-2-7b-80k.heads.png
    python -m retrieval_head.heads compare head_score/Qwen1.5-14B.json head_score/Qwen1.5-14B-Chat.json
    python -m retrieval_head.heads export head_score/llama-2-7b-80k.json --to duo --top 30 --out duo/llama-2-7b-80k
    python -m retrieval_head.heads stability head_score/llama-2-7b-80k.json --top 10   # intervals, P(top-10)
    python -m retrieval_head.heads convergence head_score/SmolLM2-135M-Instruct.trials.jsonl --top 10

``--top K`` means the K highest-scoring heads in every command (the rows of ``top``, the
sets ``compare`` and ``stability`` compare, the heads ``export`` keeps); the old ``-k``
still works. ``export`` reads the model's shape from the detection manifest beside a
``<model>.json`` when the file alone does not say it (``--layers/--heads/--kv_heads`` win).

Every command reads any head file ``head_files`` accepts (detected by content): top, heatmap
and compare in the file's own unit (a column per query head, or per KV head for duo and
razor files); export (``head_export``) converts between formats and units.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..headfiles.order import format_rows, top_rows
from ..headfiles.original import mean_grid, states_kv, validate_head_scores
from ..headfiles.validate import HEAD_KEY
from ..methods.registry import scored_by
from ..store.manifest import shape_beside
from . import parsers
from .common import check_writable, run_cli, writing
from .stability import check_count, convergence_cmd, stability_cmd

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

# torch, matplotlib and the head-file readers load inside the subcommands that need them:
# `heads top` on a JSON file answers without torch (tests/test_start.py).

PROG = "python -m retrieval_head.heads"


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their average rank.

    >>> average_ranks(np.array([10.0, 20.0, 10.0, 30.0])).tolist()
    [1.5, 3.0, 1.5, 4.0]
    """
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)                  # rank of the last member of each tie group
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either side is constant."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def compare(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> dict:
    """Agreement of two ``[layers, heads]`` score grids.

    Returns ``{"k", "overlap", "jaccard", "spearman", "shared"}``: the overlap count and
    Jaccard index (rounded to 3 places) of the two top-``k`` sets (ties broken layer-major,
    as in ``top_heads``), the Spearman correlation over all heads, and the shared heads as
    ``(layer, head)`` in ``a``'s rank order. ``k`` is capped at the number of heads.
    """
    import torch

    from ..headfiles.ranking import top_heads

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.dim() != 2 or b.dim() != 2:
        raise UserError(f"compare needs two [layers, heads] grids, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise UserError(
            f"cannot compare a {a.shape[0]} x {a.shape[1]} grid with a {b.shape[0]} x {b.shape[1]} grid; "
            "pass head scores of models with the same layers and heads"
        )
    if k < 1:
        raise UserError(f"--top must be at least 1, got {k}")
    k = min(k, a.numel())
    top_a = [(l, h) for l, h, _ in top_heads(a, k)]
    top_b = {(l, h) for l, h, _ in top_heads(b, k)}
    shared = [lh for lh in top_a if lh in top_b]
    union = len(set(top_a) | top_b)
    return {
        "k": k,
        "overlap": len(shared),
        "jaccard": round(len(shared) / union, 3),
        "spearman": spearman(a.numpy(), b.numpy()),
        "shared": shared,
    }


def compare_all(grids: dict[str, torch.Tensor], k: int = 20) -> dict:
    """Every pair of ``grids`` (name -> ``[layers, heads]``): ``{"names", "k", "overlap",
    "spearman"}``, the last two as ``n x n`` lists (``compare`` of row i with column j; the
    diagonal is each grid with itself).

    >>> import torch
    >>> r = compare_all({"a": torch.tensor([[3., 2., 1.]]), "b": torch.tensor([[1., 2., 3.]])}, k=1)
    >>> r["overlap"], r["spearman"]
    ([[1, 0], [0, 1]], [[1.0, -1.0], [-1.0, 1.0]])
    """
    names = list(grids)
    pairs = [[compare(grids[a], grids[b], k) for b in names] for a in names]
    return {"names": names, "k": pairs[0][0]["k"], "overlap": [[p["overlap"] for p in row] for row in pairs],
            "spearman": [[p["spearman"] for p in row] for row in pairs]}


def compare_table(r: dict) -> str:
    """Markdown: top-k overlap above the diagonal, Spearman below it."""
    names = r["names"]
    head = "| top-%d overlap \\ Spearman | " % r["k"] + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    rows = []
    for i, a in enumerate(names):
        cells = [str(r["overlap"][i][j]) if j > i else ("-" if j == i else f"{r['spearman'][i][j]:.2f}")
                 for j in range(len(names))]
        rows.append(f"| {a} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def compare_figure(r: dict, out_png: str | Path, title: str | None = None) -> Path:
    """Two matrices side by side: top-k overlap (counts) and Spearman, a row and column per file."""
    import seaborn as sns
    from matplotlib.figure import Figure

    from ..plots.niah import figure_title, render

    names, n = r["names"], len(r["names"])
    fig = Figure(figsize=(3.2 + 1.6 * n, 1.6 + 0.55 * n), layout="constrained")
    for i, (key, fmt, vmax, vmin, cmap) in enumerate((("overlap", "d", r["k"], 0, "viridis"),
                                                     ("spearman", ".2f", 1.0, -1.0, "vlag"))):
        ax = fig.add_subplot(1, 2, i + 1)
        sns.heatmap(r[key], ax=ax, annot=True, fmt=fmt, cmap=cmap, vmin=vmin, vmax=vmax, square=True,
                    xticklabels=names, yticklabels=names, cbar=False, annot_kws={"fontsize": 8})
        ax.set_title(f"top-{r['k']} overlap" if key == "overlap" else "Spearman (all heads)", fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
    if title:
        figure_title(fig, title)
    return render(fig, out_png)


def heads_figure(scores: torch.Tensor, title: str | None = None, mark_top: int = 5,
                 label: str = "retrieval score (mean over trials)") -> Figure:
    """Layers x heads heatmap (y = layer, 0 at the top; x = head), viridis; the top
    ``mark_top`` heads are outlined in red; the title is wrapped to the figure's width;
    ``label``: the colour bar's (what the scores are, ``scored_by``)."""
    import seaborn as sns
    import torch
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ..headfiles.ranking import top_heads
    from ..plots.niah import figure_title

    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.dim() != 2:
        raise UserError(f"heads_heatmap needs a [layers, heads] grid, got shape {tuple(s.shape)}")
    layers, heads = s.shape
    size = (min(16.0, 3.0 + 0.3 * heads), min(14.0, 1.5 + 0.28 * layers))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    sns.heatmap(s.numpy(), ax=ax, cmap="viridis", vmin=0.0, vmax=max(float(s.max()), 1e-9),
                cbar_kws={"label": label},
                xticklabels="auto", yticklabels="auto")
    for l, h, _ in top_heads(s, min(mark_top, s.numel())):
        ax.add_patch(Rectangle((h, l), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlabel("Head")
    ax.set_ylabel("Layer")
    ax.tick_params(axis="y", labelrotation=0)
    if title:
        figure_title(fig, title)
    return fig


def heads_heatmap(scores: torch.Tensor, out_png: str | Path, title: str | None = None,
                  mark_top: int = 5, label: str = "retrieval score (mean over trials)") -> Path:
    """``heads_figure`` written atomically as a PNG to ``out_png``; returns the path."""
    from ..plots.niah import render

    return render(heads_figure(scores, title, mark_top, label), out_png)


def _fmt_heads(heads: list[tuple[int, int]]) -> str:
    return " ".join(f"{l}-{h}" for l, h in heads) or "(none)"


def _read(path: str):
    """A head file in the unit it states (``headfiles.load.read_stated``)."""
    from ..headfiles.load import read_stated

    return read_stated(Path(path))


def _png_out(out: str | None, default: str, output_dir: str | None = ".") -> Path:
    """The figure's path (``--out``, else ``default`` in ``--output_dir``), refused in one
    line when it cannot be written."""
    path = Path(out) if out else Path(output_dir or ".") / default
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; pass the PNG file to write")
    check_writable([path], "--out")
    return path


def _cmd_top(args) -> None:
    check_count("--top", args.top)
    grid = _original_grid(Path(args.file))
    if grid is None:  # another format: the full reader (torch)
        hf = _read(args.file)
        grid, unit, fmt = hf.scores.tolist(), hf.unit, hf.format
    else:
        unit, fmt = ("kv" if states_kv(Path(args.file), len(grid[0])) else "query"), "original"
    if unit == "kv":
        print(f"per KV head ({fmt} file): head = layer-kv_head")
    print(format_rows(top_rows(grid, args.top)))


def _original_grid(path: Path) -> list[list[float]] | None:
    """The per-head means of a file in the original's format, read without torch; None for
    any other content (the full reader then reads it, or says what is wrong)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and HEAD_KEY.fullmatch(k) and
                                                         isinstance(v, list) for k, v in data.items()):
        return None  # not the original's {"layer-head": [...]} (razor's {"layer": [...]} looks alike)
    return mean_grid(validate_head_scores(data, path), path)


def _cmd_heatmap(args) -> None:
    path = Path(args.file)
    hf = _read(args.file)
    out = _png_out(args.out, f"{path.stem}.heads.png", args.output_dir)
    scores = hf.scores
    layers, n_heads = scores.shape
    noun = "KV heads" if hf.unit == "kv" else "heads"
    what = scored_by(path, hf.format)
    # the details on a line of their own: figure_title wraps each line only where it must
    title = f"{path.stem}: {what.split(' (')[0]} per head\n({layers} layers x {n_heads} {noun}; top 5 outlined)"
    with writing(out):
        print(heads_heatmap(scores, out, title, label=what))


def _cmd_compare_all(args) -> None:
    from ..methods.registry import method_of

    files = [args.a, args.b, *args.more]
    read = [_read(f) for f in files]
    if len({h.unit for h in read}) > 1:
        raise UserError("the files are not all of one unit (per query head / per KV head); compare files of one "
                        "unit (convert with: python -m retrieval_head.heads export)")
    names = [method_of(Path(f)) for f in files]
    models = {Path(f).name.removesuffix(f".{m}.json") for f, m in zip(files, names)}
    names = ["retrieval" if n in models else n for n in names]  # <model>.json beside <model>.<method>.json
    if len(set(names)) < len(names):
        names = [Path(f).name for f in files]
    out = _png_out(args.out, f"{Path(files[0]).name.split('.')[0]}.compare.png", args.output_dir)
    r = compare_all(dict(zip(names, (h.scores for h in read))), args.top)
    print(compare_table(r), end="")
    with writing(out):
        print(compare_figure(r, out, f"agreement of {len(files)} head rankings (top-{r['k']} overlap, Spearman)"))


def _cmd_compare(args) -> None:
    check_count("--top", args.top)
    if args.more:
        return _cmd_compare_all(args)
    fa, fb = _read(args.a), _read(args.b)
    if fa.unit != fb.unit:
        raise UserError(f"{args.a} is per {'KV head' if fa.unit == 'kv' else 'query head'}, {args.b} per "
                        f"{'KV head' if fb.unit == 'kv' else 'query head'}; compare files of one unit (convert one "
                        "with: python -m retrieval_head.heads export)")
    a, b = fa.scores, fb.scores
    r = compare(a, b, args.top)
    print(f"A: {args.a} ({a.shape[0]} x {a.shape[1]})")
    print(f"B: {args.b} ({b.shape[0]} x {b.shape[1]})")
    print(f"top-{r['k']} overlap: {r['overlap']} / {r['k']}")
    print(f"Jaccard:        {r['jaccard']:.3f}")
    print(f"Spearman:       {r['spearman']:.3f}")
    print(f"shared heads:   {_fmt_heads(r['shared'])}")


def _cmd_export(args) -> None:
    from ..headfiles import export as head_export
    from ..headfiles import foreign as head_files

    src = head_files.read_head_file_any(Path(args.file), file_unit=args.unit)
    given = dict(layers=args.layers, heads=args.heads, kv_heads=args.kv_heads)
    found = shape_beside(Path(args.file)) if None in given.values() else None
    shape = {k: v if v is not None or found is None else found[1][k] for k, v in given.items()}
    try:
        done = head_export.export(src, args.to, Path(args.out), top=args.top, threshold=args.threshold,
                                  sink=args.sink, recent=args.recent, overwrite=args.overwrite, **shape)
    except UserError as e:
        if found is None or shape == given:
            raise
        raise UserError(f"{e} (the model's shape is from {found[0]}; pass --layers/--heads/--kv_heads to "
                        "override it)") from None
    print(f"{args.to}: {done.summary} -> {', '.join(str(p) for p in done.paths)}")


def parser(prog: str = PROG):
    """The ``heads`` command's parser (``parsers.heads``); each subcommand's usage line starts with ``prog``."""
    return parsers.heads(prog)


COMMANDS = {"top": _cmd_top, "heatmap": _cmd_heatmap, "compare": _cmd_compare, "export": _cmd_export,
            "stability": stability_cmd, "convergence": lambda args: convergence_cmd(args, _png_out)}


def run(argv: list[str] | None = None, prog: str = PROG) -> int:
    """The ``heads`` command; a user's error raises ``UserError`` (``main`` prints it)."""
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if hasattr(args, "file_flag"):  # FILE, or --head_score FILE: one of the two
        if (args.file is None) == (args.file_flag is None):
            raise UserError(f"{prog} {args.cmd} reads one head file: pass FILE or --head_score FILE")
        args.file = args.file or args.file_flag
    COMMANDS[args.cmd](args)
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``python -m retrieval_head.heads {top,heatmap,compare,export,stability,convergence} ...``
    behind the error boundary (``run_cli``): 0, or 2 after one ``error: ...`` line."""
    return run_cli(partial(run, prog=prog), argv, resumable=False)


cli = main  # every command module's entry point is ``cli``


if __name__ == "__main__":
    sys.exit(main())
