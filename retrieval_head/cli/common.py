"""What both commands share: run options, the two-step model load, output guards, the
error boundary.

The CLI prints; the library logs. A ``UserError`` becomes one ``error: ...`` line on
stderr and exit code 2, never a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.progress import Status, tell
from ..errors import UserError
from ..models.spec import ModelSpec
from ..options import add_options, option

# torch, transformers and the model code load inside the functions that need them: this module
# builds every command's parser, and `--help` must answer without them (tests/test_start.py).


@dataclass(frozen=True)
class RunOptions:
    """Options of a run that are not the experiment's: outputs, logging, scale-out. Each
    command extends it (its own ``output_dir`` default, its own extras)."""

    output_dir: str = option("out")
    model_name_suffix: str | None = option(None, "appended to output names as _SUFFIX (as the original)")
    overwrite: bool = option(False, "replace existing outputs of this run")
    resume: bool = option(False, "continue an interrupted run (same settings; finished results are kept)")
    quiet: bool = option(False, "no progress bar, no phase lines (loading, prefilling) before it")
    verbose: bool = option(False, "log what the library does")
    rank: int | None = option(None, "this shard; none: $RANK from torchrun, else 0")
    world_size: int | None = option(None, "shards; none: $WORLD_SIZE, else 1")
    threads: int | None = option(None)

    def check(self) -> None:
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass one")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error: ...`` line (what is wrong, where to
    look) and exit 2, as every other bad input; argparse's own prints the usage block first.

    >>> p = Parser(prog="retrieval-head heads top")
    >>> _ = p.add_argument("--top", type=int)
    >>> p.parse_args(["--top", "x"])       # stderr: error: argument --top: invalid int value: 'x'; see ...
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser(prog: str, doc: str, groups: list[tuple[type, str]]) -> argparse.ArgumentParser:
    """A command's parser, generated from its option dataclasses (``options.add_options``)."""
    p = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for cls, title in groups:
        add_options(p, cls, title)
    return p


def apply_threads(threads: int | None) -> None:
    """Pin the thread count (thread counts can change float bits; the manifest records it)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def status_printer(quiet: bool) -> Status | None:
    """Where a run's phase lines go until its first trial finishes (``engine.progress``):
    stderr, where the bar goes, stdout keeping the results; none under ``--quiet``, which
    silences the bar too (the library then logs them, shown by ``--verbose``).

    The first line is the weights' load (``load_checked``): opening the config and tokenizer
    and laying out the prompts take a second and check every input, and a mistake there
    stays one ``error:`` line on stderr, with no phase line before it."""
    if quiet:
        return None
    return lambda message: print(message, file=sys.stderr, flush=True)


def open_checked(spec: ModelSpec, world: int):
    """The model's config and tokenizer (no weights yet), on this shard's device (an ``Opened``)."""
    from ..engine.shard import local_device
    from ..models.loading import open_model

    return open_model(dataclasses.replace(spec, device=local_device(spec.device, world)))


def load_checked(opened, say: Status | None = None):
    """The weights, once every input is checked; refuses a model the probe cannot reach."""
    from ..core.decode import check_supported
    from ..models.loading import load_weights, model_info

    tell(say, f"loading the model's weights ({opened.shape.num_layers} layers) ...")
    model = load_weights(opened)
    check_supported(model)
    return model, model_info(opened, model)


PAUSE_ENV = "RETRIEVAL_HEAD_TEST_PAUSE_AFTER"


def pause_for_tests(written: int) -> None:
    """Test-only hook: with ``RETRIEVAL_HEAD_TEST_PAUSE_AFTER=N`` the process stops itself
    (SIGSTOP) right after its N-th result is durably written, so a test can kill or
    interrupt it at a known point instead of racing it."""
    at = os.environ.get(PAUSE_ENV)
    if at and written == int(at):
        os.kill(os.getpid(), signal.SIGSTOP)


def guard_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse to touch existing outputs unless told; check their folders can be made.

    Creates nothing: a run refused later on leaves no trace.
    """
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists; pass --overwrite to replace it (or --resume to continue that run)")
    check_writable(paths)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "absl", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:  # weight-loading bars would bury the one-line errors and our own progress
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def check_writable(paths: list[Path], flag: str = "--output_dir") -> None:
    """Refuse outputs whose folder cannot be made or written; creates nothing. ``flag``: the
    option that names the output, for the hint."""
    for folder in dict.fromkeys(Path(p).parent for p in paths):  # in order: the first named is the one told
        base = folder
        while not base.exists() and base != base.parent:
            base = base.parent
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to {folder} ({base} is not a writable folder); pass a writable {flag}")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None, resumable: bool = True) -> int:
    """The error boundary of every command: a ``UserError`` is one ``error: ...`` line and
    exit 2, a full disk one line and exit 28, Ctrl-C one line and exit 130; never a traceback.

    ``resumable``: the command has ``--resume`` (detect, mask), so the lines say to use it.

        >>> def main(argv):
        ...     raise UserError("--top 0 is not a count; pass a positive integer")
        >>> run_cli(main, [])            # prints: error: --top 0 is not a count; pass a positive integer
        2
    """
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        kept = "finished results are intact" if resumable else "outputs are written whole or not at all"
        again = "rerun with --resume" if resumable else "rerun the command"
        print(f"error: no space left on device ({e.filename or 'writing results'}); {kept}: free some space and "
              f"{again}", file=sys.stderr)
        return 28
    except KeyboardInterrupt:
        kept = "finished trials are kept in the trial log" if resumable else "no output was left half-written"
        again = "rerun with --resume to continue" if resumable else "rerun the command"
        print(f"interrupted: {kept}; {again}", file=sys.stderr)
        return 130


@contextmanager
def writing(what: str, flag: str = "--out"):
    """An ``OSError`` while writing ``what`` as one line (a full disk passes on to ``run_cli``,
    which says so). The commands check their output folders first (``check_writable``); this
    catches what that cannot foresee (a read-only file in the way, a quota)."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise UserError(f"cannot write {what}: {e.strerror or e}; pass a writable {flag}") from None
