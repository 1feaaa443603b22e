"""``python -m retrieval_head.judge`` = ``retrieval-head judge`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.judge``)."""

import sys

from .cli.judge import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m retrieval_head.judge"))
