"""``needle_in_haystack_with_mask.py``: the needle test with retrieval heads masked.

    python needle_in_haystack_with_mask.py --mask_top 10 --s 500 --e 2000
    python needle_in_haystack_with_mask.py --mask_top 0 10 -10 --seeds 0 1 2   # one process, shared prefills

Each condition writes a folder under ``--output_dir`` (default ``results/graph/``):
``<model>`` (K = 0), ``<model>_block_top{K}``, ``<model>_block_random{K}`` (``_seed{S}``
with ``--seeds``), plus ``_zero`` / ``_all`` for non-default mask mode / phase;
``<model>_press_<name>_b<F>`` per ``--budget F`` of ``--press NAME``. Each holds
one JSON per (length, depth) in the original's fields plus the mask, a manifest.json and
heatmap.png; with several conditions, ``<model>_side_by_side.png`` shows them together.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from ..engine.progress import Status
from ..engine.shard import from_env, shard_suffix
from ..errors import UserError
from ..experiments.compress import keep_conditions
from ..experiments.condition import route
from ..experiments.mask import Condition, NiahSettings, make_conditions, run_niah
from ..experiments.press import kv_scores, press_conditions
from ..experiments.sweep import TrialKey, plan
from ..headfiles.load import load_ranking
from ..inputs.tasks import string_match
from ..models.loading import ModelSpec, model_identity, model_name
from ..models.shape import ModelShape
from ..options import fingerprint, from_args
from ..store.files import dump_json, write_atomic
from ..store.manifest import build_manifest, utc_now
from ..store.results import read_records, record_path
from ..vocabulary import RANKED_PRESSES
from . import parsers
from .common import (
    apply_threads,
    guard_outputs,
    load_checked,
    open_checked,
    pause_for_tests,
    run_cli,
    setup_logging,
    status_printer,
)

PROG = "needle_in_haystack_with_mask.py"  # the usage line's name when the entry point names none


GROUPS = parsers.GROUPS["mask"]


def parser(prog: str = PROG):
    return parsers.mask(prog)


def head_scores_for(st: NiahSettings, name: str, shape: ModelShape) -> tuple[torch.Tensor | None, str]:
    """(the ranking the conditions mask or keep by, its unit): ``--unit``, else the unit the
    head file states (a ``<model>.kv_max.json`` is per KV head), else query heads; from a head
    file of any accepted format (``headfiles.load.load_ranking``). No file is read when no
    condition ranks heads."""
    keeps = any(k > 0 for k in st.keep_counts(shape.num_layers * shape.num_heads) or ())
    if all(k == 0 for k in st.mask_top) and not keeps:
        return None, st.unit or "query"
    default = f"{name}.kv_max.json" if st.unit == "kv" else f"{name}.json"
    return load_ranking(Path(st.head_score or Path("head_score") / default), shape, st.unit)


def press_scores(st: NiahSettings, name: str, shape: ModelShape) -> torch.Tensor | None:
    """The head ranking per KV head a press that ranks heads (duo, headkv) reads: ``--head_score``
    (any accepted format), else ``head_score/<model>.kv_max.json``; None for the other presses."""
    if st.press not in RANKED_PRESSES:
        return None
    path = Path(st.head_score) if st.head_score else Path("head_score") / f"{name}.kv_max.json"
    if st.head_score is None and not path.exists():
        raise UserError(f"--press {st.press} ranks heads by a head file: pass --head_score FILE (there is no {path})")
    return kv_scores(path, shape)


def summarize(tables: list[tuple[str, list[Condition], dict[str, list[dict]]]]) -> None:
    """One table across tasks: per task and condition, the mean ROUGE-1 recall (x100), RULER's
    string match (x100: the share of asked values in the response) and the share of trials
    returning every value."""
    print("\nper task and condition: ROUGE-1 recall, string match, all values returned (x100, means):")
    for task, conditions, results in tables:
        means = {}
        for c in conditions:
            recs = results[c.folder]
            means[c.folder] = statistics.fmean(r["score"] for r in recs) if recs else float("nan")
            match = [record_match(r) for r in recs]
            sm = statistics.fmean(match) if match else float("nan")
            right = 100 * statistics.fmean(m == 100 for m in match) if match else float("nan")
            kept = [r["mask"]["kv_kept"] for r in recs if "kv_kept" in r["mask"]]
            kv = f"  KV kept {100 * statistics.fmean(kept):5.1f}%" if kept else ""
            print(f"  {task:<10} {means[c.folder]:6.1f} {sm:6.1f} {right:6.1f}  {c.label():<55} {c.folder}{kv}")
        randoms = [means[c.folder] for c in conditions if c.kind == "random"]
        if len(randoms) > 1:
            mean, sd = statistics.fmean(randoms), statistics.stdev(randoms)
            print(f"  {task:<10} random draws: mean {mean:.1f}, sd {sd:.1f} over {len(randoms)} seeds")


def record_match(record: dict) -> float:
    """A record's string match (x100): a task record's own, else whether the single needle's
    answer is in the response (case-insensitive).

    >>> record_match({"model_response": "Captain Juniper.", "real_needle": "captain juniper"})
    100.0
    """
    if "string_match" in record:
        return record["string_match"]
    return 100 * string_match(record["model_response"], [record["real_needle"]])


def prepare_folders(out: Path, conditions, manifest: dict, run: parsers.NiahRun, mine: list[TrialKey], sfx: str) -> set:
    """Write each folder's (shard) manifest first; on --resume check it and return this shard's
    done cells. --overwrite removes the old results of this shard's cells only, so a shard
    started later never deletes another's fresh results."""
    name = manifest["config"]["model_name"]
    done = set(mine)
    for c in conditions:
        folder = out / c.folder
        fp = dict(manifest["fingerprint"], condition=c.describe())
        old = folder / f"manifest{sfx}.json"
        if run.resume and old.exists():
            if json.loads(old.read_text()).get("fingerprint") != json.loads(json.dumps(fp)):
                raise UserError(f"{folder} was made with different settings (model, needle, mask or decoding); "
                                "rerun with those settings or use --overwrite")
        elif run.overwrite:
            stale = folder.glob(f"{name}_len_*_depth_*.json") if not sfx else \
                (record_path(folder, name, key) for key in mine)
            for f in [*stale, folder / "heatmap.png", folder / "manifest.json"]:
                f.unlink(missing_ok=True)
        done &= {key for key in mine if record_path(folder, name, key).exists()}
        write_atomic(old, dump_json(dict(manifest, fingerprint=fp, condition=c.describe())))
    return done if run.resume else set()


def complete(out: Path, conditions, manifest: dict, keys: list[TrialKey]) -> bool:
    """Whether every cell of every condition is written; refuses shards of other settings."""
    name, (rank, world) = manifest["config"]["model_name"], manifest["shard"]
    for c in conditions:
        mine = json.loads((out / c.folder / f"manifest{shard_suffix(rank, world)}.json").read_text())
        for r in range(world if world > 1 else 0):
            m = out / c.folder / f"manifest{shard_suffix(r, world)}.json"
            if m.exists() and json.loads(m.read_text()).get("fingerprint") != mine["fingerprint"]:
                raise UserError(f"shard {r} ({m}) was made with different settings; rerun it with these")
    return all(record_path(out / c.folder, name, key).exists() for c in conditions for key in keys)


def finish(out: Path, conditions, manifest: dict, keys: list[TrialKey], sfx: str, plot: bool,
           tag: str = "") -> dict[str, list[dict]]:
    """Read back every folder's results for this grid, mark it finished, draw its heatmap
    (and, for several masking conditions, the side-by-side figure; for streaming, the
    compression curve; ``tag`` ends their names: a generated task's ``_<task>``)."""
    from ..experiments.compress import compression_figure
    from ..plots.niah import heatmap, side_by_side

    name, results = manifest["config"]["model_name"], {}
    for c in conditions:
        folder = out / c.folder
        results[c.folder] = read_records(folder, name, keys)
        m = json.loads((folder / f"manifest{sfx}.json").read_text())
        write_atomic(folder / "manifest.json", dump_json(dict(m, status="finished", finished_utc=utc_now())))
        if plot:
            heatmap(folder)
    masking = [c for c in conditions if getattr(c.mask, "mode", None) != "stream"]  # presses beside them
    streaming = [c for c in conditions if getattr(c.mask, "mode", None) == "stream"]
    if plot and len(masking) > 1:
        print(f"side by side: {side_by_side([out / c.folder for c in masking], out / f'{name}{tag}_side_by_side.png')}")
    if plot and streaming:
        m = streaming[0].mask
        kind = f"{m.phase}_s{m.sink}_r{m.recent}" + ("_kv" if streaming[0].unit == "kv" else "")
        # its title names the model, task, metric and streaming setting, read from the records
        path = compression_figure([out / c.folder for c in masking + streaming],
                                  out / f"{name}{tag}_compression_{kind}.png")
        print(f"compression curve: {path}")
    return results


def all_conditions(settings: NiahSettings, name: str, shape: ModelShape) -> list[Condition]:
    """Every condition asked: ``--mask_top``'s, ``--keep_full`` / ``--keep_fraction``'s, ``--press``'s."""
    (scores, unit), seeds = head_scores_for(settings, name, shape), list(settings.seeds or [settings.seed])
    group = shape.group if unit == "kv" else None
    units = (shape.num_layers, shape.num_kv_heads if group else shape.num_heads)
    conditions = make_conditions(name, list(settings.mask_top), scores, settings.mask_mode, settings.phase, seeds,
                                 seed_folders=settings.seeds is not None, group=group)
    keep = settings.keep_counts(units[0] * units[1])
    if keep:
        conditions += keep_conditions(name, list(keep), scores, settings.phase, seeds,
                                      settings.seeds is not None, settings.sink, settings.recent, group, units)
    if settings.press:
        ranking = press_scores(settings, name, shape)
        conditions += press_conditions(name, settings.press, settings.budget, shape, ranking, settings.press_args,
                                       settings.phase)
    return conditions


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    spec, settings, run = from_args(ModelSpec, args), from_args(NiahSettings, args), from_args(parsers.NiahRun, args)
    setup_logging(run.verbose)
    run.check()
    settings.check()
    rank, world = from_env(run.rank, run.world_size)
    apply_threads(run.threads)
    needle = settings.the_needle()
    name = model_name(spec.model_path, run.model_name_suffix)
    out, sfx = Path(run.output_dir), shard_suffix(rank, world)
    started = utc_now()
    say = status_printer(run.quiet)
    opened = open_checked(spec, world)
    shape = opened.shape
    settings.check_stream(shape)
    conditions = all_conditions(settings, name, shape)
    route(shape, conditions, settings.cache)  # --cache real where it cannot apply: refused before the model loads
    per_task = {t: task_conditions(conditions, t) for t in settings.task}
    guard_outputs([out / c.folder / f"manifest{sfx}.json" for cs in per_task.values() for c in cs],
                  run.overwrite or run.resume)
    # every input of every task checked before the weights load
    checked = {t: plan(opened.tokenizer, shape, settings, [needle], t) for t in settings.task}
    model, info = load_checked(opened, say)
    tables, pending = [], False
    for t in settings.task:
        config = dict(settings.applied(), **run.__dict__, model_name=name, needle=needle.needle,
                      question=needle.question, real_needle=needle.real_needle)
        fp = dict(fingerprint(settings), needle=[needle.needle, needle.question, needle.real_needle])
        if t != "single":  # a single-needle run's manifest reads as before tasks existed
            config.update(task=t)
            fp.update(task=t, task_seed=settings.task_seed)
        manifest = build_manifest("needle_in_haystack_with_mask", config, info, settings.seed, started)
        manifest.update(status="running", shard=[rank, world], haystacks=checked[t].pairing(), fingerprint=dict(
            fp, grid=[checked[t].lengths, checked[t].depths], world_size=world, model=model_identity(info)))
        results = run_task(model, opened.tokenizer, settings, run, per_task[t], manifest, checked[t], out, sfx,
                           "" if t == "single" else f"_{t}", say)
        if results is None:
            pending = True
            continue
        tables.append((t, per_task[t], results))
    if pending:
        print(f"shard {rank} of {world} finished; the last shard to finish writes the manifests and heatmaps")
    if tables:
        summarize(tables)
        print(f"\nwrote {', '.join(str(out / c.folder) for _, cs, _ in tables for c in cs)}")
    return 0


def task_conditions(conditions: list[Condition], task: str) -> list[Condition]:
    """The conditions of one task: a generated task's folders end in ``_<task>``.

    >>> [c.folder for c in task_conditions([Condition("none", 0, None, folder="m")], "vt")]
    ['m_vt']
    """
    return conditions if task == "single" else [replace(c, folder=f"{c.folder}_{task}") for c in conditions]


def run_task(model, tokenizer, settings: NiahSettings, run: parsers.NiahRun, conditions, manifest: dict, checked,
             out: Path, sfx: str, tag: str, say: Status | None = None) -> dict[str, list[dict]] | None:
    """One task's sweep under every condition: its folders prepared, its cells run and saved;
    the results when every shard is done (else None)."""
    name, (rank, world) = manifest["config"]["model_name"], manifest["shard"]
    keys, mine = checked.keys(), checked.keys((rank, world))
    skip = prepare_folders(out, conditions, manifest, run, mine, sfx) | (set(keys) - set(mine))
    written = 0

    def save(c: Condition, rec: dict) -> None:
        nonlocal written
        key = TrialKey(checked.needles[0].needle_id, rec["context_length"], rec["depth_percent"])
        write_atomic(record_path(out / c.folder, name, key), dump_json(rec))
        written += 1
        pause_for_tests(written)

    run_niah(model, tokenizer, settings, conditions, model_name=name, on_record=save,
             progress=not run.quiet, skip=frozenset(skip), checked=checked, status=say)
    if not complete(out, conditions, manifest, keys):
        return None
    return finish(out, conditions, manifest, keys, sfx, plot=not run.no_plot, tag=tag)


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``main`` behind the error boundary (``common.run_cli``); ``prog``: the command the user typed."""
    return run_cli(partial(main, prog=prog), argv)
