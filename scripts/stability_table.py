"""Print the README's "How many trials are enough" table (markdown) for head-score files.

For each file: its counted trials, the stable top-10 at 95 % (heads in the top 10 of at
least 95 % of 1000 bootstrap draws of its trials), and how many trials, taken in a random
order (mean and max over 20 orders), were enough for the top-10 set to equal the whole
file's from then on, for the top 10 to hold the whole file's stable top-10, and to hold
its stable top-5
(``retrieval_head.analysis.convergence.summary``)::

    .venv/bin/python scripts/stability_table.py ../shared/reference/head_score/*.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval_head.analysis.convergence import summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="head_score/*.json files (or trial logs)")
    p.add_argument("--seeds", type=int, default=20, help="random trial orders")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    args = p.parse_args(argv)
    print("| file | trials | stable top-10 at 95 % | top-10 set unchanged in draws | trials until the top-10 "
          "equals the file's: mean (max) | ... holds the stable top-10 | ... holds the stable top-5 |")
    print("|---|---|---|---|---|---|---|")
    for f in sorted(args.files):
        r = summary(Path(f), seeds=args.seeds, draws=args.draws)
        eq, held, inside = r["top_equal"], r["stable_top_in_top"], r["stable_in_top"]
        print(f"| {Path(f).stem} | {r['trials']} | {len(r['stable_top'])}: {' '.join(r['stable_top'])} | "
              f"{r['set_equal']:.1%} | {eq[0]:.1f} ({eq[1]:.0f}) = {eq[0] / r['trials']:.1%} | "
              f"{held[0]:.1f} ({held[1]:.0f}) | "
              f"{inside[0]:.1f} ({inside[1]:.0f}) [{len(r['stable_small'])} heads] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
