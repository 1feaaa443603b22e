"""``python -m retrieval_head.compress`` = ``retrieval-head compress`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.experiments.compress``)."""

import sys

from .experiments.compress import main

if __name__ == "__main__":
    sys.exit(main())
