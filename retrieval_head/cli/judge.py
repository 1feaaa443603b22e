"""``retrieval-head judge``: mask each method's top-K heads and random-K in one needle test, or
(``--press``) press the KV cache ranked by each method's heads and by random rankings (the
experiment is ``experiments.judge``; this is its command: options, outputs, manifest)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

from ..engine.progress import count
from ..engine.shard import from_env
from ..errors import UserError
from ..experiments.judge import (
    JudgeSettings,
    judge_conditions,
    labelled,
    press_judge_conditions,
    summary,
    table,
)
from ..experiments.mask import run_niah
from ..experiments.sweep import plan
from ..headfiles.load import load_head_scores
from ..models.loading import ModelSpec, model_name
from ..options import from_args
from ..store.files import dump_json, write_atomic
from ..store.manifest import build_manifest, utc_now
from ..store.results import MATCH, ROUGE, SINGLE
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

PROG = "python -m retrieval_head.judge"  # the usage line's name when the entry point names none


GROUPS = parsers.GROUPS["judge"]


def parser(prog: str = PROG):
    return parsers.judge(prog)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    spec, st, run = from_args(ModelSpec, args), from_args(JudgeSettings, args), from_args(parsers.JudgeRun, args)
    setup_logging(run.verbose)
    run.check()
    st.check()
    if run.resume:
        raise UserError("the judge does not resume (one run, one table); rerun it, or pass --overwrite")
    if from_env(run.rank, run.world_size)[1] > 1:
        raise UserError("the judge runs in one process (its table needs every condition); drop --world_size")
    apply_threads(run.threads)
    name, out = model_name(spec.model_path, run.model_name_suffix), Path(run.output_dir)
    task = st.task[0]
    stem = name if task == "single" else f"{name}_{task}"  # a generated task's files: <model>_<task>.judge.*
    paths = {k: out / f"{stem}.judge.{k}" for k in ("jsonl", "md", "png")}
    paths["manifest"] = out / f"{stem}.judge.manifest.json"
    guard_outputs(list(paths.values()), run.overwrite)
    started = utc_now()
    say = status_printer(run.quiet)
    opened = open_checked(spec, 1)
    files = labelled(st.head_score, name)
    if st.press:  # each file read per KV head, as the press reads it
        conditions = press_judge_conditions(files, st.press, st.budget, st.seeds, opened.shape, st.press_args)
    else:
        scores = {m: load_head_scores(p, opened.shape) for m, p in files.items()}  # one shape: the model's
        conditions = judge_conditions(scores, st.mask_top, st.seeds, st.mask_mode)
    niah = st.niah()
    checked = plan(opened.tokenizer, opened.shape, niah, [niah.the_needle()], task)  # all before the weights
    model, info = load_checked(opened, say)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = run_niah(model, opened.tokenizer, niah, conditions, model_name=name, progress=not run.quiet,
                       checked=checked, status=say)
    seconds = time.perf_counter() - t0
    write_atomic(paths["jsonl"], "".join(json.dumps(r) + "\n" for c in conditions for r in results[c.folder]))
    metric = "score" if task == "single" else "string_match"  # a task is scored as RULER does
    s = summary(conditions, results, st.levels(), metric)
    grid = f"{', '.join(map(str, checked.lengths))} tokens x depths {', '.join(map(str, checked.depths))}"
    what = f"needle {st.needle_id}" if task == "single" else f"task {task} (string match x100, seed {st.task_seed})"
    how = f"{st.mask_mode} masking" if st.press is None else f"press {st.press} keeping each budget of the KV cache"
    text = table(s, st.levels(), st.press)
    write_atomic(paths["md"], f"# {name}: the causal judge ({how}, decode phase; {grid}; "
                              f"{what}; {count(len(st.seeds), 'random seed')})\n\n{text}")
    from ..plots.judge import figure  # matplotlib: imported once the run is done

    scored = ROUGE if task == "single" else MATCH
    asked = "each method's top-K heads masked" if st.press is None else f"{st.press} ranking KV heads by each method"
    random = "random K" if st.press is None else "random rankings"
    title = (f"{name}, {SINGLE if task == 'single' else task}: {scored.label} with {asked}\n({how}, decode phase; "
             f"methods {', '.join(files)}; {random} over {count(len(st.seeds), 'seed')}; {grid})")
    figure(s, st.levels(), paths["png"], title, scored.label, st.press)
    config = dict(st.applied(), **dataclasses.asdict(run), model_name=name,
                  files={m: str(p) for m, p in files.items()})
    write_atomic(paths["manifest"], dump_json(dict(build_manifest("judge", config, info, None, started),
                                                   haystacks=checked.pairing(),
                                                   conditions=[c.describe() for c in conditions],
                                                   summary=s, seconds=round(seconds, 3))))
    print(text)
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({seconds:.0f} s)")
    return 0


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``main`` behind the error boundary (``common.run_cli``); ``prog``: the command the user typed."""
    return run_cli(partial(main, prog=prog), argv, resumable=False)


if __name__ == "__main__":
    sys.exit(cli())
