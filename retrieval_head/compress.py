"""``python -m retrieval_head.compress`` = ``retrieval-head compress`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.cli.compress``)."""

import sys

from .cli.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("compress", sys.argv[1:], "python -m retrieval_head.compress"))
