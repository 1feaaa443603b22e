"""``python -m retrieval_head ...`` = the ``retrieval-head`` console command."""

import sys

from .cli import main

sys.exit(main())
