"""``python -m retrieval_head.heads`` = ``retrieval-head heads`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.heads``)."""

import sys

from .cli.heads import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m retrieval_head.heads"))
