#!/usr/bin/env python
"""Needle-in-a-haystack with retrieval heads masked (top-K, random-K or none). See `--help`."""
import sys

from retrieval_head.cli.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("mask", sys.argv[1:], "needle_in_haystack_with_mask.py"))
