"""``python -m retrieval_head.plot`` = ``retrieval-head plot`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.plot``)."""

import sys

from .cli.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("plot", sys.argv[1:], "python -m retrieval_head.plot"))
