"""``retrieval-head heads``: ranked tables, heatmaps and comparisons of head files from the
shell (the statistics are ``analysis.compare``'s, the figures ``plots.heads``'; ``compare``,
``compare_all`` and ``compare_table`` are still importable from here, as the notebook did).

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

from ..analysis.compare import compare, compare_all, compare_table
from ..errors import UserError
from ..headfiles.order import format_rows, top_rows
from ..headfiles.original import mean_grid, states_kv, validate_head_scores
from ..headfiles.validate import HEAD_KEY
from ..methods.registry import scored_by
from ..store.manifest import shape_beside
from . import parsers
from .common import check_writable, run_cli, writing
from .stability import check_count, convergence_cmd, stability_cmd

# torch, matplotlib and the head-file readers load inside the subcommands that need them:
# `heads top` on a JSON file answers without torch (tests/test_start.py).

PROG = "python -m retrieval_head.heads"


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
    from ..plots.heads import heads_heatmap  # matplotlib: only when a figure is asked for

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
    from ..plots.heads import compare_figure

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
