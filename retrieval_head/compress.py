"""``python -m retrieval_head.compress`` = ``retrieval-head compress`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.compress``)."""

import sys

from .cli.compress import cli

if __name__ == "__main__":
    sys.exit(cli(prog="python -m retrieval_head.compress"))
