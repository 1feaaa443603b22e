#!/usr/bin/env python
"""Needle-in-a-haystack with retrieval heads masked (top-K, random-K or none). See `--help`."""
import sys

from retrieval_head.cli.mask import cli

if __name__ == "__main__":
    sys.exit(cli(prog="needle_in_haystack_with_mask.py"))
