"""``python -m retrieval_head ...`` = the ``retrieval-head`` console command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m retrieval_head"))
