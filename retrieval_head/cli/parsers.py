"""Every command's parser, built from the option dataclasses and the vocabulary.

This module imports no torch and no transformers (nor anything that does): ``--help``
answers at once, and ``docs/cli.md``'s tables are generated from these parsers
(``scripts/cli_docs.py``), so help texts, API defaults and the docs cannot drift. The
commands themselves (``cli/<command>.py``) parse with these same parsers.

    >>> args = build("mask", "retrieval-head mask").parse_args(["--phase", "all", "--unit", "kv"])
    >>> args.phase, args.unit
    ('all', 'kv')
    >>> sorted(PARSERS)
    ['compress', 'detect', 'generate', 'heads', 'judge', 'leaderboard', 'mask', 'plot']
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

from ..experiments.detect_settings import DetectSettings
from ..experiments.leaderboard_settings import LeaderboardSettings
from ..experiments.settings import JudgeSettings, NiahSettings
from ..models.spec import ModelSpec
from ..options import add_options, add_term, old_spelling, option
from ..vocabulary import DUO_RECENT, DUO_SINK, MAX_DRAWS, MAX_ORDERS, PHASES, PRESSES, SIDE_BY_SIDE, UNITS
from .common import Parser, RunOptions

FMT = argparse.RawDescriptionHelpFormatter  # the option dataclasses write each default into the help


class DEFAULTS(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Hand-built parsers: the description as written, each option's default appended."""


def doc(module: str) -> str:
    """A command module's docstring, read from its source (importing it would import torch)."""
    return ast.get_docstring(ast.parse((Path(__file__).parent / f"{module}.py").read_text(encoding="utf-8"))) or ""


@dataclass(frozen=True)
class DetectRun(RunOptions):
    output_dir: str = option("head_score", "where the head-score files, trial log and manifest go")
    preset: str | None = option(None, "paper: lengths linspace(1000, 50000, 20), plain prompts (no chat template)",
                                choices=("paper",))
    top: int = option(20, "the K highest-scoring heads printed")


@dataclass(frozen=True)
class NiahRun(RunOptions):
    output_dir: str = option("results/graph", "where the condition folders go")
    no_plot: bool = option(False, "skip the heatmaps and the side-by-side figure")


@dataclass(frozen=True)
class LeaderboardRun(RunOptions):
    output_dir: str = option("results/leaderboard", "where the condition folders, the table, the figures and the "
                                                    "manifest go")


@dataclass(frozen=True)
class JudgeRun(RunOptions):
    output_dir: str = option("results/judge", "where the records, table, figure and manifest go")


@dataclass(frozen=True)
class GenerateOptions:
    """``retrieval-head generate``'s options besides the model and the prompt."""

    head_score: str | None = option(None, "a head-score file of any accepted format ranking the heads; none: "
                                          "head_score/<model>.json (<model>.kv_max.json with --unit kv)")
    unit: str | None = option(None, choices=UNITS)
    keep_full: tuple[int, ...] | None = option(None, "K: the top-K heads keep their whole KV cache, every other "
                                                     "only --sink + --recent keys (several values: one answer "
                                                     "each); none (and no --keep_fraction): every head full")
    keep_fraction: tuple[float, ...] | None = option(None, "as --keep_full, as a share of all heads (rounded)",
                                                     metavar="F")
    press: str | None = option(None, "a KV-cache press instead of streamed heads (docs/presses.md), simulated on "
                                     "the full cache: the answer it gives, and the bytes its kept keys would hold; "
                                     "duo and headkv rank heads by --head_score read per KV head (none: "
                                     "head_score/<model>.kv_max.json)", choices=PRESSES)
    budget: tuple[float, ...] | None = option(None, "the share of the prompt's KV cache the press keeps, in (0, 1] "
                                                    "(several values: one answer each)", metavar="F")
    press_args: tuple[str, ...] | None = option(None, metavar="KEY=VALUE")
    sink: int = option(4)
    recent: int = option(64)
    phase: str = option("decode", choices=PHASES)
    question: str | None = option(None, "the question asked after the prompt (phase context: the context is the "
                                        "prompt, compressed, and the question is appended whole)")
    chat_template: str = option("auto", metavar="{auto,on,off,FILE}")
    max_new_tokens: int = option(64)
    threads: int | None = option(None)
    verbose: bool = option(False, "log what the library does")


# each command's option dataclasses and their --help section titles
GROUPS = {"detect": [(ModelSpec, "model"), (DetectSettings, "sweep"), (DetectRun, "run")],
          "mask": [(ModelSpec, "model"), (NiahSettings, "needle test"), (NiahRun, "run")],
          "judge": [(ModelSpec, "model"), (JudgeSettings, "judge"), (JudgeRun, "run")],
          "leaderboard": [(ModelSpec, "model"), (LeaderboardSettings, "leaderboard"), (LeaderboardRun, "run")],
          "generate": [(GenerateOptions, "generate"), (ModelSpec, "model")]}


def detect(prog: str) -> argparse.ArgumentParser:
    return _grouped(prog, doc("detect"), GROUPS["detect"])


def mask(prog: str) -> argparse.ArgumentParser:
    return _grouped(prog, doc("mask"), GROUPS["mask"])


def judge(prog: str) -> argparse.ArgumentParser:
    return _grouped(prog, doc("../experiments/judge"), GROUPS["judge"])


def leaderboard(prog: str) -> argparse.ArgumentParser:
    return _grouped(prog, doc("leaderboard"), GROUPS["leaderboard"])


def _grouped(prog: str, description: str, groups) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=description, formatter_class=FMT)
    for cls, title in groups:
        add_options(p, cls, title)
    return p


def generate(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=doc("generate"), formatter_class=FMT)
    p.add_argument("prompt_file", metavar="PROMPT_FILE",
                   help="the prompt: a UTF-8 text file, or - for standard input (the chat template applied by "
                        "default, as detect and mask)")
    for cls, title in GROUPS["generate"]:
        add_options(p, cls, title)
    return p


def plot(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, formatter_class=DEFAULTS, description=(
        "Draw NIAH heatmaps. One DIR: its heatmap.png (or --out). Several: one side-by-side "
        f"figure (default {SIDE_BY_SIDE}), with difference maps against a no-mask folder."))
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results folder(s) of trial JSON files")
    add_term(p, "output_dir", None, help="the folder the figure goes into; none: DIR for one DIR, "
                                         f"{Path(SIDE_BY_SIDE).parent} for several")
    add_term(p, "out", None, metavar="PNG")
    p.add_argument("--title", default=None, help="title of a single heatmap; none: model, mask, mean score")
    return p


def compress(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, formatter_class=DEFAULTS, description="The compression curve of result folders (several "
               "runs pooled), as a figure (compression.png) and a markdown table.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="result folders of the mask script (any conditions)")
    add_term(p, "output_dir", ".", help="the folder compression.png goes into")
    add_term(p, "out", None, metavar="PNG")
    p.add_argument("--title", default=None,
                   help="figure title; none: the model, task, metric and streaming setting the records ran")
    p.add_argument("--heads", type=int, default=None,
                   help="the model's heads (units), for the table's share-of-heads column")
    return p


def heads(prog: str) -> argparse.ArgumentParser:
    """``heads``: top, heatmap, compare, export, stability, convergence; ``args.cmd`` names it."""
    p = Parser(prog=prog, formatter_class=DEFAULTS, description=doc("heads"))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = _sub(sub, "top", "ranked table of the top heads", 20)
    s = _sub(sub, "heatmap", "layers x heads PNG", None)
    _outputs(s, "<stem>.heads.png")
    s = sub.add_parser("compare", formatter_class=DEFAULTS, help="top-k overlap, Jaccard and Spearman of two files "
                       "(3+ files: every pair, as a table and a matrix figure)")
    s.add_argument("a", help="a head file (any accepted format)")
    s.add_argument("b", help="another, for a model of the same shape")
    s.add_argument("more", nargs="*", help="more files: every pair is compared")
    _top(s, 20)
    _outputs(s, "<first file's model>.compare.png (3+ files)")
    _export(sub)
    s = _sub(sub, "stability", "bootstrap intervals and P(top-K) of every head", 10, trials=True)
    s.description = ("Resample the counted trials with replacement: per head the mean, its percentile interval and "
                     "P(in the top K; ties at random); the stable top K (P >= confidence) and how often the whole "
                     "top-K set comes back.")
    s.add_argument("--draws", type=int, default=1000, help=f"bootstrap resamples (at most {MAX_DRAWS})")
    add_term(s, "seed", 0, type=int)
    s.add_argument("--confidence", type=float, default=0.95,
                   help="interval level and the stable top-K's threshold, in (0, 1]")
    s.add_argument("--by", choices=("needle", "length", "depth"), default=None,
                   help="trial logs: resample within each needle / length / depth (keeps the grid's balance)")
    s.add_argument("--rows", type=int, default=None, help="rows of the table; none: K")
    s.add_argument("--json", action="store_true", help="every head's mean, lo, hi, p_top as JSON")
    s = _sub(sub, "convergence", "PNG: top-K overlap with the final answer vs trials", 10, trials=True)
    s.add_argument("--orders", type=int, metavar="N", default=20, help=f"random trial orders (at most {MAX_ORDERS})")
    old_spelling(s, "--seeds", "orders", "--orders", type=int)  # its old name: --seeds elsewhere lists seeds
    add_term(s, "seed", 0, type=int)
    _outputs(s, "<stem>.convergence.png")
    return p


HEAD_FILE = "a head file (any accepted format)"
TRIALS = "a head_score/*.json (per-trial lists) or a <model>.trials.jsonl"


def _sub(sub, name: str, help: str, top: int | None, trials: bool = False):
    """A ``heads`` subcommand reading one file: positional FILE, or ``--head_score FILE``."""
    s = sub.add_parser(name, formatter_class=DEFAULTS, help=help)
    what = TRIALS if trials else HEAD_FILE
    s.add_argument("file", nargs="?", default=None, metavar="FILE", help=f"{what} (or --head_score FILE)")
    s.add_argument("--head_score", dest="file_flag", metavar="FILE", default=None, help=f"{what}, as FILE")
    if top is not None:
        _top(s, top)
    return s


def _top(s, default: int) -> None:
    add_term(s, "top", default, type=int, metavar="K")
    old_spelling(s, "-k", "top", "--top", type=int)


def _outputs(s, default: str) -> None:
    add_term(s, "output_dir", ".", help=f"the folder the figure goes into, as {default}")
    add_term(s, "out", None, metavar="PNG")


def _export(sub) -> None:
    s = _sub(sub, "export", "write a head file as duo / razor / qrhead / layers", None)
    s.description = ("duo (a folder: full_attention_heads.tsv + config.json) and razor are per KV head, qrhead and "
                     "layers per query head; per-query-head scores become per-KV-head ones by each group's max. duo, "
                     "razor and layers keep a set of heads: pass --top K or --threshold T; qrhead ranks every head. "
                     "The model's layers, heads and KV heads come from the flags, else from the detection manifest "
                     "beside FILE (<model>.manifest.json), else from FILE.")
    s.add_argument("--to", required=True, choices=("duo", "razor", "qrhead", "layers"), help="the format written")
    add_term(s, "out", None, required=True, metavar="PATH", help="the file written (a folder for duo)")
    _top(s, None)
    s.add_argument("--threshold", type=float, metavar="T", default=None, help="keep the heads scoring >= T")
    add_term(s, "unit", None, choices=UNITS)
    s.add_argument("--layers", type=int, metavar="N", default=None,
                   help="the model's layers, where FILE does not state them (razor, layers: only the ids named); "
                        "none: from the manifest beside FILE")
    s.add_argument("--heads", type=int, metavar="N", default=None,
                   help="the model's query heads, to read a per-KV-head FILE per query head; none: from the "
                        "manifest beside FILE")
    s.add_argument("--kv_heads", type=int, metavar="N", default=None,
                   help="the model's KV heads, to read a per-query-head FILE per KV head (duo, razor); none: from "
                        "the manifest beside FILE")
    add_term(s, "sink", None, type=int, metavar="S", help=f"duo's sink_size; none: DuoAttention's {DUO_SINK}")
    add_term(s, "recent", None, type=int, metavar="R", help=f"duo's recent_size; none: DuoAttention's {DUO_RECENT}")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")


PARSERS = {"detect": detect, "mask": mask, "judge": judge, "generate": generate, "heads": heads, "plot": plot,
           "compress": compress, "leaderboard": leaderboard}


def build(command: str, prog: str) -> argparse.ArgumentParser:
    """The parser of ``command`` (a key of ``PARSERS``), its usage line naming ``prog``."""
    return PARSERS[command](prog)
