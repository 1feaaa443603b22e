"""``retrieval-head``: one console command for the toolkit's tools.

    retrieval-head detect ...    # = python retrieval_head_detection.py ...
    retrieval-head mask ...      # = python needle_in_haystack_with_mask.py ...
    retrieval-head plot DIR ...  # = python -m retrieval_head.plot ...
    retrieval-head compress DIR ...   # = python -m retrieval_head.compress ...
    retrieval-head heads top|heatmap|compare|export|stability|convergence ...  # = python -m retrieval_head.heads
    retrieval-head judge --head_score A B ...   # = python -m retrieval_head.judge ...
    retrieval-head generate PROMPT_FILE --head_score F --keep_fraction 0.25   # a head-wise KV cache
    retrieval-head leaderboard --press snapkv duo --budget 0.25 0.1    # presses x budgets x tasks

``python -m retrieval_head ...`` is the same command. Each subcommand takes exactly the
options of the script it names (``--help`` lists them with their defaults), runs behind the
same error boundary (``common.run_cli``: one ``error: ...`` line and exit 2 for a bad input,
exit 28 on a full disk, 130 on Ctrl-C), and its usage line names what the user typed:
``retrieval-head heads top --help`` shows ``usage: retrieval-head heads top ...``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (the module under retrieval_head.cli whose ``cli(argv, prog)`` runs it, the one-line help)
COMMANDS = {"detect": ("detect", "detect retrieval heads (retrieval_head_detection.py)"),
            "mask": ("mask", "the needle test with heads masked (needle_in_haystack_with_mask.py)"),
            "plot": ("plot", "needle-test heatmaps of result folders"),
            "compress": ("compress", "the compression curve (score vs KV cache kept) of streaming result folders"),
            "heads": ("heads", "inspect head-score files: top, heatmap, compare, export, stability, convergence"),
            "judge": ("judge", "mask each method's top-K heads and random-K in one needle test (judge.py)"),
            "generate": ("generate", "answer a prompt with a head-wise KV cache (retrieval heads full) and "
                                     "report its memory"),
            "leaderboard": ("leaderboard", "KV-cache presses x budgets x tasks on one model: the table and "
                                           "figures")}


def usage(prog: str = "retrieval-head") -> str:
    rows = "\n".join(f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items())
    return (f"usage: {prog} {{{','.join(COMMANDS)}}} [options]\n\n{rows}\n\n"
            f"`{prog} COMMAND --help` lists a command's options.")


def main(argv: list[str] | None = None, prog: str = "retrieval-head") -> int:
    """Run ``argv[0]``'s command on the rest; ``prog`` is how the user called this one."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog))
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; pass one of {', '.join(COMMANDS)}\n\n{usage(prog)}",
              file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:], f"{prog} {argv[0]}")


def run_command(command: str, argv: list[str], prog: str) -> int:
    """Run ``command`` on ``argv``. ``--help`` is answered from ``parsers`` alone, before the
    command's module (and with it torch and transformers) is imported."""
    if any(a in ("-h", "--help") for a in argv):
        from .parsers import build

        build(command, prog).parse_args(argv)  # prints the help and exits (or one error line, exit 2)
    module = importlib.import_module(f"{__package__}.{COMMANDS[command][0]}")  # only the command run is imported
    return module.cli(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
