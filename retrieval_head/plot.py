"""``python -m retrieval_head.plot`` = ``retrieval-head plot`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.plot``)."""

import sys

from .cli.plot import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m retrieval_head.plot"))
