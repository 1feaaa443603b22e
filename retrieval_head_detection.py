#!/usr/bin/env python
"""Detect retrieval heads: writes head_score/<model>.json. See `--help` and README.md."""
import sys

from retrieval_head.cli.commands import run_command

if __name__ == "__main__":
    sys.exit(run_command("detect", sys.argv[1:], "retrieval_head_detection.py"))
