"""``python -m retrieval_head.plot`` = ``retrieval-head plot`` (kept for scripts written before the
subpackages; the command lives in ``retrieval_head.plots.niah``)."""

import sys

from .plots.niah import main

if __name__ == "__main__":
    sys.exit(main())
