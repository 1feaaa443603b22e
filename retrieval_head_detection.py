#!/usr/bin/env python
"""Detect retrieval heads: writes head_score/<model>.json. See `--help` and README.md."""
import sys

from retrieval_head.cli.detect import cli

if __name__ == "__main__":
    sys.exit(cli(prog="retrieval_head_detection.py"))
