"""``retrieval-head generate``: answer a prompt with a head-wise KV cache (the retrieval heads'
KV heads keep every key, the others only their sink and recent keys) and report the memory.

    retrieval-head generate prompt.txt --head_score head_score/SmolLM2-135M-Instruct.json \\
        --keep_fraction 0.25 --sink 4 --recent 64 --phase decode

prints the answer, then one line: the cache's bytes compressed vs a full cache of the same
length, and the process's peak RSS (and CUDA peak). Every input is checked before the
weights load. The prompt file is tokenized as it is (no chat template); with ``--phase
context`` it is the context, and ``--question`` is appended after the compression point.
"""

from __future__ import annotations

import argparse
import resource
import sys
from functools import partial
from pathlib import Path

import torch

from ..core.headwise import HeadwiseCache
from ..core.headwise_attend import generate
from ..core.keep import KEEP_PHASES, cache_bytes, keep_count, keep_top
from ..errors import UserError
from ..headfiles.load import load_head_scores
from ..models.loading import ModelSpec
from ..options import add_options, from_args
from .common import Parser, load_checked, open_checked, run_cli, setup_logging

PROG = "retrieval-head generate"


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = Parser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
               description="Answer PROMPT_FILE with a head-wise KV cache; print the answer and a memory line.")
    p.add_argument("prompt_file", metavar="PROMPT_FILE", help="the prompt (UTF-8 text, tokenized as it is)")
    p.add_argument("--head_score", default=None, help="head-score file ranking the heads (any format heads reads)")
    p.add_argument("--keep_full", type=int, default=None, help="KV heads kept full (the top K by score)")
    p.add_argument("--keep_fraction", type=float, default=None, help="or the fraction of all KV heads kept full")
    p.add_argument("--sink", type=int, default=4, help="first keys every streamed head keeps")
    p.add_argument("--recent", type=int, default=64, help="last keys every streamed head keeps (the query included)")
    p.add_argument("--phase", default="decode", choices=KEEP_PHASES,
                   help="decode: compress the prompt after the prefill (kvpress press); all: from the first "
                        "token (DuoAttention); context: the prompt file, then --question whole (kvpress pipeline)")
    p.add_argument("--question", default=None, help="phase context: the text appended after the compressed context")
    p.add_argument("--max_new_tokens", type=int, default=64, help="tokens to generate (greedy)")
    p.add_argument("--verbose", action="store_true", help="log what the library does")
    add_options(p, ModelSpec, "model")
    return p


def read_prompt(path: Path) -> str:
    if not path.is_file():
        what = "is a folder, not a file" if path.exists() else "does not exist"
        raise UserError(f"prompt file {path} {what}; pass a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text; re-save it as UTF-8") from None


def check_args(args) -> None:
    """What can be checked from the command line alone."""
    if args.sink < 0 or args.recent < 1:
        raise UserError(f"--sink {args.sink} --recent {args.recent}: streaming needs sink >= 0 and recent >= 1")
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: pass a positive count")
    if (args.keep_full is None) == (args.keep_fraction is None):
        raise UserError("give exactly one of --keep_full K and --keep_fraction F")
    if args.keep_fraction is not None:
        keep_count(1, fraction=args.keep_fraction)  # the range, before any file is read
    if (args.phase == "context") != (args.question is not None):
        raise UserError("--question goes with --phase context (the context is the prompt file), and only there")


def keep_set(args, shape) -> torch.Tensor:
    """bool ``[layers, kv_heads]`` from the head scores (no file needed when none is kept)."""
    total = shape.num_layers * shape.num_kv_heads
    n = keep_count(total, args.keep_full, args.keep_fraction)
    if n == 0:
        return torch.zeros(shape.num_layers, shape.num_kv_heads, dtype=torch.bool)
    if args.head_score is None:
        raise UserError("keeping heads full needs their ranking: pass --head_score FILE")
    scores = load_head_scores(Path(args.head_score), shape, unit="kv")
    return keep_top(scores, 1, k=n)


def memory_line(cache: HeadwiseCache, shape, itemsize: int) -> str:
    length = cache.get_seq_length()
    full = cache_bytes(shape, None, 1, length, itemsize)
    kept = cache.nbytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    cuda = f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB" if torch.cuda.is_available() else ""
    return (f"memory: KV cache {kept / 2**20:.2f} MiB compressed vs {full / 2**20:.2f} MiB full "
            f"({kept / full:.1%}) at {length} tokens, {int(cache.keep.sum())}/{cache.keep.numel()} KV heads full; "
            f"peak RSS {peak:.0f} MiB{cuda}")


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    setup_logging(args.verbose)
    check_args(args)
    text = read_prompt(Path(args.prompt_file))
    opened = open_checked(from_args(ModelSpec, args), 1)
    keep = keep_set(args, opened.shape)
    tok = opened.tokenizer
    ids = tok(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    context = None
    if args.question is not None:
        context = ids.shape[1]
        ids = torch.cat([ids, tok(args.question, add_special_tokens=False, return_tensors="pt")["input_ids"]], 1)
    model, _ = load_checked(opened)
    cache = HeadwiseCache(opened.shape, keep, args.sink, args.recent, args.phase, context)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = generate(model, cache, input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                       max_new_tokens=args.max_new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    print(memory_line(cache, opened.shape, next(model.parameters()).element_size()))
    return 0


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    return run_cli(partial(main, prog=prog), argv, resumable=False)


if __name__ == "__main__":
    sys.exit(cli())
