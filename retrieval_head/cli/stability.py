"""``heads stability`` and ``heads convergence``: how sure the top heads are (the bootstrap
is ``analysis.stability``'s, the convergence curve ``analysis.convergence``'s; these are
their subcommands: options, checks, outputs).

    retrieval-head heads stability head_score/M.trials.jsonl --top 10 --by length
    retrieval-head heads convergence head_score/M.trials.jsonl --top 10 --orders 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.stability import MAX_DRAWS
from ..errors import UserError
from ..experiments.sweep import check_seeds

MAX_ORDERS = 100_000  # random trial orders of the convergence curve (a Python loop each)
WHAT = "a head_score/*.json (per-trial lists) or a <model>.trials.jsonl"


def hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str) -> None:
    """An old spelling of ``dest``'s option, still accepted, not shown in ``--help``.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--top", type=int, default=20)
    >>> hidden_alias(p, "-k", "top")
    >>> p.parse_args(["-k", "3"]).top, p.parse_args([]).top
    (3, 20)
    """
    p.add_argument(flag, dest=dest, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def check_count(flag: str, value: int | None, most: int | None = None, what: str = "") -> None:
    """Refuse a count below 1 (or above ``most``) in one line naming the option."""
    if value is None:
        return
    if value < 1:
        raise UserError(f"{flag} {value} is not a count; pass a positive integer")
    if most is not None and value > most:
        raise UserError(f"{flag} {value} is more than {most}{what}; pass at most {most}")


def check_confidence(confidence: float) -> None:
    if not 0 < confidence <= 1:
        raise UserError(f"--confidence {confidence:g} is not in (0, 1]; pass a level such as 0.95")


def _load(args):
    """The file's counted trials, with ``--top`` checked against its heads."""
    from ..analysis import stability

    path = Path(args.file)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass {WHAT}")
    if not path.exists():
        raise UserError(f"{path} does not exist; pass {WHAT}")
    t = stability.load_trials(path)
    heads = t.scores.shape[1] * t.scores.shape[2]
    check_count("--top", args.top, heads, f" (the {heads} heads of {path.name})")
    return t


def _cmd_stability(args) -> None:
    from ..analysis import stability

    check_count("--top", args.top)
    check_count("--draws", args.draws, MAX_DRAWS, " (bootstrap resamples)")
    check_count("--rows", args.rows)
    check_confidence(args.confidence)
    check_seeds("--seed", args.seed)
    t = _load(args)
    strata = t.strata(args.by)
    s = stability.bootstrap(t.scores, args.top, args.draws, args.seed, args.confidence, strata)
    if args.json:
        print(stability.dump(s, file=Path(args.file).name, by=args.by), end="")
    else:
        print(stability.format_stability(s, args.rows))


def _cmd_convergence(args, png_out) -> None:
    from ..analysis import convergence
    from .common import writing

    check_count("--top", args.top)
    check_count("--orders", args.orders, MAX_ORDERS, " (random trial orders)")
    check_seeds("--seed", args.seed)
    stem = Path(args.file).name.removesuffix(".jsonl").removesuffix(".json").removesuffix(".trials")
    out = png_out(args.out, f"{stem}.convergence.png")
    t = _load(args)
    c = convergence.convergence(t.scores, args.top, args.orders, args.seed)
    lengths = convergence.by_length(t, args.top, seed=args.seed) if t.keys else None
    from ..methods.registry import scored_by

    # a trial log holds the retrieval scores of its trials; a head file, its method's (by its name)
    by = "retrieval score" if args.file.endswith(".jsonl") else scored_by(Path(args.file)).split(" (")[0]
    title = f"{stem}: how fast the top-{args.top} heads by {by} settle ({t.scores.shape[0]} counted trials)"
    with writing(out):
        print(convergence.write_figure(c, out, title, lengths))


def add_stability_commands(sub, fmt, png_out) -> None:
    """``stability`` and ``convergence`` on ``sub`` (the ``heads`` subparsers); ``png_out``
    resolves and checks a figure's ``--out``."""
    p = sub.add_parser("stability", formatter_class=fmt, help="bootstrap intervals and P(top-K) of every head",
                       description="Resample the counted trials with replacement: per head the mean, its percentile "
                                   "interval and P(in the top K; ties at random); the stable top K (P >= confidence) "
                                   "and how often the whole top-K set comes back.")
    p.add_argument("file", help=WHAT)
    p.add_argument("--top", type=int, metavar="K", default=10, help="size of the top set")
    p.add_argument("--draws", type=int, default=1000, help=f"bootstrap resamples (at most {MAX_DRAWS})")
    p.add_argument("--seed", type=int, default=0, help="the resampling's seed (same seed, same output)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="interval level and the stable top-K's threshold, in (0, 1]")
    p.add_argument("--by", choices=("needle", "length", "depth"), default=None,
                   help="trial logs: resample within each needle / length / depth (keeps the grid's balance)")
    p.add_argument("--rows", type=int, default=None, help="rows of the table; none: K")
    p.add_argument("--json", action="store_true", help="every head's mean, lo, hi, p_top as JSON")
    p.set_defaults(func=_cmd_stability)
    p = sub.add_parser("convergence", formatter_class=fmt, help="PNG: top-K overlap with the final answer vs trials")
    p.add_argument("file", help=WHAT)
    p.add_argument("--top", type=int, metavar="K", default=10, help="size of the top set")
    p.add_argument("--orders", type=int, metavar="N", default=20, help=f"random trial orders (at most {MAX_ORDERS})")
    hidden_alias(p, "--seeds", "orders")  # its old name: --seeds elsewhere lists seeds
    p.add_argument("--seed", type=int, default=0, help="seed of the orders")
    p.add_argument("--out", metavar="PNG", default=None, help="none: <stem>.convergence.png in the current folder")
    p.set_defaults(func=lambda args: _cmd_convergence(args, png_out))
