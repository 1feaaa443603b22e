"""``retrieval-head``: one console command for the toolkit's tools.

    retrieval-head detect ...    # = python retrieval_head_detection.py ...
    retrieval-head mask ...      # = python needle_in_haystack_with_mask.py ...
    retrieval-head plot DIR ...  # = python -m retrieval_head.plot ...
    retrieval-head compress DIR ...   # = python -m retrieval_head.compress ...
    retrieval-head heads top|heatmap|compare|export|stability|convergence ...  # = python -m retrieval_head.heads
    retrieval-head judge --head_scores A B ...   # = python -m retrieval_head.judge ...

Each subcommand takes exactly the options of the script it names (``--help`` lists them
with their defaults).
"""

from __future__ import annotations

import sys


def _detect(argv):
    from .detect import cli
    return cli(argv)


def _mask(argv):
    from .mask import cli
    return cli(argv)


def _plot(argv):
    from ..plots.niah import main
    return main(argv)


def _compress(argv):
    from ..experiments.compress import main
    return main(argv)


def _judge(argv):
    from .judge import cli
    return cli(argv)


def _heads(argv):
    from .heads import main
    return main(argv)


COMMANDS = {"detect": (_detect, "detect retrieval heads (retrieval_head_detection.py)"),
            "mask": (_mask, "the needle test with heads masked (needle_in_haystack_with_mask.py)"),
            "plot": (_plot, "needle-test heatmaps of result folders"),
            "compress": (_compress, "the compression curve (score vs KV cache kept) of streaming result folders"),
            "heads": (_heads, "inspect head-score files: top, heatmap, compare, export, stability, convergence"),
            "judge": (_judge, "mask each method's top-K heads and random-K in one needle test (judge.py)")}


def usage() -> str:
    rows = "\n".join(f"  {name:<7} {text}" for name, (_, text) in COMMANDS.items())
    return f"usage: retrieval-head {{{','.join(COMMANDS)}}} [options]\n\n{rows}\n\n`retrieval-head COMMAND --help` lists a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
