"""``retrieval-head compress``: the compression curve (the task's score vs KV cache kept) of
streaming result folders, as a figure and a markdown table (the curve is
``experiments.compress``'s; this is the command).

    retrieval-head compress results/graph/SmolLM2* --out compression.png --heads 270
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from ..errors import UserError
from ..experiments.compress import compression_figure, curves, table
from . import parsers
from .common import check_writable, run_cli, writing

PROG = "retrieval-head compress"


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    return parsers.compress(prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    if args.heads is not None and args.heads < 1:
        raise UserError(f"--heads {args.heads} is not a count; pass the model's number of heads (a positive integer)")
    for d in map(Path, args.dirs):
        if not d.is_dir():
            what = "is a file, not a folder" if d.exists() else "does not exist"
            raise UserError(f"results folder {d} {what}; pass the mask script's result folders")
    out = Path(args.out) if args.out else Path(args.output_dir) / "compression.png"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass the PNG file to write")
    check_writable([out], "--out")
    c = curves(args.dirs)
    with writing(out):
        print(compression_figure(args.dirs, out, args.title))
    heads = args.heads or max([k for _, _, k in c["top"]] + [1])
    print(table(c, heads))
    return 0


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    return run_cli(partial(main, prog=prog), argv, resumable=False)


if __name__ == "__main__":
    sys.exit(cli())
