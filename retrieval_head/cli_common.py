"""What both commands share: model options, output guards, the error boundary.

The CLI prints; the library logs. A ``UserError`` becomes one ``error: ...`` line on
stderr and exit code 2, never a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .models import ModelSpec

PRESET_PAPER_LENGTHS = (1000, 50000, 20)  # linspace(1000, 50000, 20), as published


def add_model_args(p: argparse.ArgumentParser) -> None:
    d = ModelSpec()
    g = p.add_argument_group("model")
    g.add_argument("--model_path", default=d.model_path,
                   help="hub id or local folder (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--model_name_suffix", default=None, help="appended to output names as _SUFFIX (as the original)")
    g.add_argument("--revision", default=d.revision, help="hub revision (branch, tag or commit)")
    g.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: float32 on CPU, the checkpoint's dtype on GPU")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--device_map", default=d.device_map, help="e.g. auto: shard layers over GPUs (accelerate)")
    g.add_argument("--attn_implementation", default=d.attn_implementation,
                   help="prefill backend: sdpa, eager, flash_attention_2 (pip install .[flash]); default: the model's")
    g.add_argument("--trust_remote_code", action="store_true", default=d.trust_remote_code)


def model_spec(args, device: str | None = None) -> ModelSpec:
    return ModelSpec(model_path=args.model_path, revision=args.revision, dtype=args.dtype, device=device or args.device,
                     device_map=args.device_map, attn_implementation=args.attn_implementation,
                     trust_remote_code=args.trust_remote_code)


def add_grid_args(p: argparse.ArgumentParser, s_default: int, e_default: int) -> None:
    g = p.add_argument_group("sweep grid")
    g.add_argument("--s", "-s", "--s_len", dest="s", type=int, default=s_default, help="shortest context length")
    g.add_argument("--e", "-e", "--e_len", dest="e", type=int, default=e_default, help="longest context length")
    g.add_argument("--num_lengths", type=int, default=20, help="lengths: round(linspace(s, e, N))")
    g.add_argument("--num_depths", type=int, default=10, help="depths: round(linspace(0, 100, N))")
    g.add_argument("--context_lengths", type=int, nargs="+", default=None, help="explicit lengths (overrides s/e)")
    g.add_argument("--depth_percents", type=int, nargs="+", default=None, help="explicit depths in 0..100")
    g.add_argument("--haystack_dir", default=None, help="folder of UTF-8 .txt files (default: Paul Graham essays)")
    g.add_argument("--needles", default=None, help="needles JSON-lines file (default: haystack/needles.jsonl)")
    g.add_argument("--chat_template", default="auto", choices=["auto", "on", "off"])
    g.add_argument("--max_new_tokens", type=int, default=50)
    g.add_argument("--prefill_chunk", type=int, default=None, help="prefill in chunks of N tokens (bounds memory)")


def grid_from_args(args) -> tuple[list[int], list[int]]:
    """Context lengths and depths from ``--context_lengths`` or ``--s/--e/--num_lengths`` and
    ``--depth_percents`` or ``--num_depths``, checked (sorted, without repeats)."""
    from .detect import sweep_depths, sweep_lengths

    lengths = args.context_lengths or sweep_lengths(args.s, args.e, args.num_lengths)
    if any(x <= 0 for x in lengths):
        raise UserError("--context_lengths must all be positive")
    depths = args.depth_percents if args.depth_percents is not None else sweep_depths(args.num_depths)
    bad = [d for d in depths if not 0 <= d <= 100]
    if bad:
        raise UserError(f"depth {bad[0]} is outside 0..100; fix --depth_percents")
    if args.max_new_tokens < 1:
        raise UserError("--max_new_tokens must be at least 1")
    if args.batch_tokens is not None and args.batch_tokens < 0:
        raise UserError("--batch_tokens must be 0 (one at a time) or a positive number of tokens")
    return sorted(set(lengths)), sorted(set(depths))


def check_output_flags(args) -> None:
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one")


def add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out")
    g.add_argument("--rank", type=int, default=None, help="this shard (default: $RANK from torchrun, else 0)")
    g.add_argument("--world_size", type=int, default=None, help="shards (default: $WORLD_SIZE, else 1)")
    g.add_argument("--threads", type=int, default=None, help="torch threads for this process (recorded)")
    g.add_argument("--batch_tokens", type=int, default=None,
                   help="decode prompts of one length together while their caches hold at most this many tokens "
                        "(same scores and responses); default: 16384 or what 1/4 of the free memory holds; "
                        "0: one at a time")


def apply_threads(args) -> None:
    """Pin the thread count (thread counts can change float bits; the manifest records it)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def guard_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse to touch existing outputs unless told; check their folders can be made.

    Creates nothing: a run refused later on leaves no trace.
    """
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists; pass --overwrite to replace it (or --resume to continue that run)")
    for folder in {p.parent for p in paths}:
        base = folder
        while not base.exists() and base != base.parent:
            base = base.parent
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to {folder} ({base} is not a writable folder); "
                            "pass a writable --output_dir")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "absl", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:  # weight-loading bars would bury the one-line errors and our own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """The error boundary: user errors are one line, Ctrl-C is exit 130."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"error: no space left on device ({e.filename or 'writing results'}); finished results are "
              "intact: free some space and rerun with --resume", file=sys.stderr)
        return 28
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept in the trial log; rerun with --resume to continue",
              file=sys.stderr)
        return 130
