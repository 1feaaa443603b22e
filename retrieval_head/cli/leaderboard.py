"""``retrieval-head leaderboard``: KV-cache presses x budgets x tasks on one model, over a grid of
context lengths x needle depths, against the full cache and Duo on random heads.

    retrieval-head leaderboard                                   # the defaults, SmolLM2-135M-Instruct
    retrieval-head leaderboard --press snapkv knorm --budget 0.25 --task single --context_lengths 1000
    retrieval-head leaderboard --resume                          # continue an interrupted run

Every condition of a task shares each prompt's one plain prefill; the presses see its keys
and their window of queries in one re-run of its last tokens (``engine.pressed``). Each
(press, budget, task) writes a folder of records under ``--output_dir``, as the needle test
does (``<model>_press_<name>_b<F>_<task>``; the full cache ``<model>_<task>``; the single
needle without the suffix), so a killed run resumes with ``--resume``. At the end:
``<model>.leaderboard.md`` (per task, a row per press and a column per budget: the mean score,
its 95 % bootstrap interval over the cells, the share of the cache's bytes held),
``<model>.leaderboard_<task>.png`` (score vs bytes held) and ``<model>.leaderboard.manifest.json``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..engine.progress import tell
from ..engine.shard import from_env, shard_suffix
from ..experiments.leaderboard import board, board_conditions, figure, points, ranking_file
from ..experiments.leaderboard_settings import LeaderboardSettings
from ..experiments.sweep import plan
from ..models.loading import ModelSpec, model_identity, model_name
from ..options import fingerprint, from_args
from ..store.files import dump_json, write_atomic
from ..store.manifest import build_manifest, utc_now
from . import parsers
from .common import (
    apply_threads,
    guard_outputs,
    load_checked,
    open_checked,
    run_cli,
    setup_logging,
    status_printer,
)
from .mask import run_task, task_conditions

PROG = "retrieval-head leaderboard"


def parser(prog: str = PROG):
    return parsers.leaderboard(prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    spec, st = from_args(ModelSpec, args), from_args(LeaderboardSettings, args)
    run = from_args(parsers.LeaderboardRun, args)
    setup_logging(run.verbose)
    run.check()
    st.check()
    rank, world = from_env(run.rank, run.world_size)
    apply_threads(run.threads)
    niah, say = st.niah(), status_printer(run.quiet)
    needle, name = niah.the_needle(), model_name(spec.model_path, run.model_name_suffix)
    out, sfx, started = Path(run.output_dir), shard_suffix(rank, world), utc_now()
    opened = open_checked(spec, world)
    rows, notes = board_conditions(st, name, opened.shape)
    for n in notes:
        tell(say, f"note: {n}")
    conditions = [c for _, cs in rows for c in cs]
    per_task = {t: task_conditions(conditions, t) for t in st.task}
    table = out / f"{name}.leaderboard.md"
    guard_outputs([table] + [out / c.folder / f"manifest{sfx}.json" for cs in per_task.values() for c in cs],
                  run.overwrite or run.resume)
    checked = {t: plan(opened.tokenizer, opened.shape, niah, [needle], t) for t in st.task}
    cells = len(checked[st.task[0]].keys())
    tell(say, f"leaderboard: {len(rows) - 1} presses x {len(st.budget)} budgets + the full cache = "
              f"{len(conditions)} conditions x {len(st.task)} tasks x {cells} cells = "
              f"{len(conditions) * len(st.task) * cells} trials")
    model, info = load_checked(opened, say)
    task_run = parsers.NiahRun(**run.__dict__, no_plot=True)  # the figures are the leaderboard's
    tables, config = [], dict(st.__dict__, **run.__dict__, model_name=name, notes=notes,
                              ranking_file=str(ranking_file(st, name)))
    for t in st.task:
        fp = dict(fingerprint(niah), needle=[needle.needle, needle.question, needle.real_needle], task=t,
                  task_seed=st.task_seed, grid=[checked[t].lengths, checked[t].depths], world_size=world,
                  model=model_identity(info))
        manifest = build_manifest("leaderboard", dict(config, task=t), info, st.seed, started)
        manifest.update(status="running", shard=[rank, world], haystacks=checked[t].pairing(), fingerprint=fp)
        results = run_task(model, opened.tokenizer, niah, task_run, per_task[t], manifest, checked[t], out, sfx,
                           "" if t == "single" else f"_{t}", say)
        if results is not None:
            task_rows = [(label, task_conditions(cs, t)) for label, cs in rows]
            tables.append((t, points(task_rows, results, st.draws, st.seed)))
    if len(tables) < len(st.task):
        print(f"shard {rank} of {world} finished; the last shard to finish writes the leaderboard")
        return 0
    write_atomic(table, board(name, st.budget, tables, cells, st.draws, st.seed, notes) + "\n")
    figures = [figure(p, name, out / f"{name}.leaderboard_{t}.png") for t, p in tables]
    write_atomic(out / f"{name}.leaderboard.manifest.json",
                 dump_json(dict(build_manifest("leaderboard", config, info, st.seed, started), status="finished",
                                tables=str(table), figures=[str(f) for f in figures])))
    print(table.read_text(encoding="utf-8"))
    print(f"wrote {table}, {', '.join(map(str, figures))}")
    return 0


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``main`` behind the error boundary (``common.run_cli``)."""
    return run_cli(partial(main, prog=prog), argv)
