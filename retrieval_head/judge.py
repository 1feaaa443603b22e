"""``python -m retrieval_head.judge`` = ``retrieval-head judge`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.judge``)."""

import sys

from .cli.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("judge", sys.argv[1:], "python -m retrieval_head.judge"))
