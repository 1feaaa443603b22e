"""``heads stability`` and ``heads convergence``: how sure the top heads are (the bootstrap
is ``analysis.stability``'s, the convergence curve ``analysis.convergence``'s; these are
their subcommands: options, checks, outputs).

    retrieval-head heads stability head_score/M.trials.jsonl --top 10 --by length
    retrieval-head heads convergence head_score/M.trials.jsonl --top 10 --orders 20
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..experiments.settings import check_seeds
from ..vocabulary import MAX_DRAWS, MAX_ORDERS

WHAT = "a head_score/*.json (per-trial lists) or a <model>.trials.jsonl"


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


def stability_cmd(args) -> None:
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


def convergence_cmd(args, png_out) -> None:
    from ..analysis import convergence
    from .common import writing

    check_count("--top", args.top)
    check_count("--orders", args.orders, MAX_ORDERS, " (random trial orders)")
    check_seeds("--seed", args.seed)
    stem = Path(args.file).name.removesuffix(".jsonl").removesuffix(".json").removesuffix(".trials")
    out = png_out(args.out, f"{stem}.convergence.png", args.output_dir)
    t = _load(args)
    c = convergence.convergence(t.scores, args.top, args.orders, args.seed)
    lengths = convergence.by_length(t, args.top, seed=args.seed) if t.keys else None
    from ..methods.registry import scored_by

    # a trial log holds the retrieval scores of its trials; a head file, its method's (by its name)
    by = "retrieval score" if args.file.endswith(".jsonl") else scored_by(Path(args.file)).split(" (")[0]
    title = f"{stem}: how fast the top-{args.top} heads by {by} settle ({t.scores.shape[0]} counted trials)"
    with writing(out):
        print(convergence.write_figure(c, out, title, lengths))
