"""``python -m retrieval_head.heads`` = ``retrieval-head heads`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.heads``)."""

import sys

from .cli.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("heads", sys.argv[1:], "python -m retrieval_head.heads"))
