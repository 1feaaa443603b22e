"""``retrieval-head plot``: needle-test heatmaps of result folders (the figures are
``plots.niah``'s; this is the command: its options and its one-line errors).

    retrieval-head plot results/graph/SmolLM2_top10                  # its heatmap.png
    retrieval-head plot results/graph/SmolLM2 results/graph/SmolLM2_top10 --out cmp.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

from ..errors import UserError
from ..plots.niah import DEFAULT_SIDE_BY_SIDE, heatmap, side_by_side
from . import parsers
from .common import check_writable, run_cli, writing

PROG = "retrieval-head plot"


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    return parsers.plot(prog)


def out_path(dirs: list[str], out: str | None, output_dir: str | None = None) -> Path:
    """Where the figure goes (``--out``, else its name in ``--output_dir``, else beside the
    results), refused (one line) when it cannot be written there.

    >>> out_path(["results/a"], None), out_path(["results/a", "results/b"], None)
    (PosixPath('results/a/heatmap.png'), PosixPath('results/graph/side_by_side.png'))
    >>> out_path(["results/a"], None, "figs")
    PosixPath('figs/heatmap.png')
    """
    default = Path(dirs[0]) / "heatmap.png" if len(dirs) == 1 else DEFAULT_SIDE_BY_SIDE
    path = Path(out) if out else (Path(output_dir) / default.name if output_dir else default)
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; pass the PNG file to write")
    return path


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for d in map(Path, args.dirs):
        if not d.is_dir():
            what = "is a file, not a folder" if d.exists() else "does not exist"
            raise UserError(f"results folder {d} {what}; pass a folder of trial JSON files")
    out = out_path(args.dirs, args.out, args.output_dir)
    check_writable([out], "--out")
    with writing(out):
        path = heatmap(args.dirs[0], out, args.title) if len(args.dirs) == 1 else side_by_side(args.dirs, out)
    print(path)
    return 0


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    return run_cli(partial(main, prog=prog), argv, resumable=False)


if __name__ == "__main__":
    sys.exit(cli())
