"""``retrieval_head_detection.py``: detect retrieval heads and write ``head_score/<model>.json``.

    python retrieval_head_detection.py --model_path P --s 0 --e 5000

Outputs in ``--output_dir`` (default ``head_score/``):
  <model>.json            the original's one-line {"layer-head": [trial scores]} file
  <model>.trials.jsonl    one record per trial, counted or not (appended as trials finish)
  <model>.manifest.json   resolved config, model, versions, git commit, times, and which haystack
                          each needle read (``haystacks``: the original's part{i+1} pairing)
  <model>.kv_max.json, <model>.kv_mean.json   GQA models: per-KV-head scores, same format
                          (each trial's group max / mean, listed per counted trial)
  <model>.<method>.json   with --method: each other method's scores, same format, and
  <model>.<method>.manifest.json   its manifest (the method, its parameters, its cost)

Whenever the needle sweep runs (any of retrieval, query-focus, needle-mass), the retrieval
files (<model>.json and, for GQA, the kv files) are written too, whatever --method says:
every trial's record holds the retrieval scores (the probe runs anyway), and a
``--method query-focus --overwrite`` that replaces the trial log must not leave an older
run's retrieval file beside it. Query-focus counts every trial, so its file is written even
when no trial passed; retrieval and needle-mass need passing trials, and a sweep where none
passed ends in one line that says which files were written and which were not.

    python retrieval_head_detection.py --method retrieval query-focus needle-mass induction echo
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import torch

from ..engine.progress import Status, tell
from ..engine.shard import from_env, shard_suffix
from ..errors import UserError
from ..experiments.detect import DetectionResult, DetectSettings, detect, sweep_methods
from ..experiments.sweep import TrialKey, plan
from ..headfiles.original import write_head_scores
from ..headfiles.ranking import format_top_table
from ..inputs.haystack import Needle
from ..methods.method import Method
from ..methods.registry import ALL, METHODS, NEEDLE, PASSING, REPEAT, RETRIEVAL, chosen, of_data, repeat_keys
from ..methods.repeat import check_fits, repeat_scores
from ..models.loading import ModelSpec, model_identity, model_name
from ..options import fingerprint, from_args
from ..store.files import dump_json, write_atomic
from ..store.manifest import build_manifest, utc_now
from ..store.trials import TrialLog
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

# torch's global RNG before the weights load: a weight the checkpoint lacks is initialised from it, the same in
# every run (decoding is greedy; --seed seeds the --until_stable bootstrap)
INIT_SEED = 42
PAPER = dict(s=1000, e=50000, num_lengths=20, context_lengths=None, chat_template="off")  # as published


PROG = "retrieval_head_detection.py"  # the usage line's name when the entry point names none


GROUPS = parsers.GROUPS["detect"]


def parser(prog: str = PROG):
    return parsers.detect(prog)


def report(result: DetectionResult, top: int) -> None:
    n, passed = len(result.trials), len(result.passed())
    print(f"\n{passed} of {n} trials passed (ROUGE-1 recall above the threshold)")
    if passed:
        print(f"top {top} retrieval heads (mean score over passing trials):")
        print(format_top_table(result.mean_scores(), top))


def adaptive_summary(a: dict) -> str:
    """One line on where an adaptive sweep stopped and what it saved."""
    last = a["rounds"][-1]
    how = (f"top-{a['k']} stable (rule {a['stop_rule']}, confidence {a['confidence']:g}, {a['draws']} draws) after "
           f"round {len(a['rounds'])} of" if a["stopped"] else
           f"top-{a['k']} not stable (rule {a['stop_rule']}) after all")
    return (f"adaptive sweep: {how} {a['rounds_planned']} rounds: ran {a['trials_run']} of {a['trials_grid']} trials, "
            f"saved {a['trials_saved']} ({a['trials_saved'] / a['trials_grid']:.0%}); last round: "
            f"{last['counted']} counted, a draw keeps {last.get('kept', 0):.1%} of the top {a['k']}, "
            f"{last.get('stable_top', 0)} of its heads with P(top-{a['k']}) >= {a['confidence']:g} "
            f"(lowest {last.get('min_p_top', 0):.3f})")


def settings_fingerprint(settings: DetectSettings, needles: list[Needle]) -> dict:
    """Everything of the settings that changes a trial's record besides its key (the
    fields marked ``result``), with the needles' content rather than their file's name."""
    fp = fingerprint(settings)
    sweep = list(of_data(settings.methods(), NEEDLE))  # induction and echo change no trial
    if sweep != [RETRIEVAL]:  # the default's fingerprint is as it always was
        fp["methods"] = sweep
    if settings.task != ("single",):  # the default's fingerprint is as it always was
        fp.update(task=list(settings.task), task_seed=settings.task_seed)
    fp["needles"] = [dataclasses.asdict(n) | {"haystack": str(n.haystack) if n.haystack else None}
                     for n in needles]
    return json.loads(json.dumps(fp))  # as it reads back from the manifest


def resumed_trials(paths: dict, fp: dict) -> dict:
    """Finished trials of the run being resumed (refusing one made with other settings)."""
    if not paths["trials"].exists():
        return {}
    old = json.loads(paths["manifest"].read_text()) if paths["manifest"].exists() else {}
    if old.get("fingerprint") != fp:
        raise UserError(f"{paths['trials']} was made with different settings (model, needles, haystack or "
                        "decoding/scoring options); rerun with those settings or use --overwrite")
    records = TrialLog(paths["trials"]).read()
    write_atomic(paths["trials"], "".join(json.dumps(r) + "\n" for r in records))  # drop a torn last line
    return {TrialKey.of(r): r for r in records}


def output_paths(out: Path, name: str, rank: int, world: int) -> dict[str, Path]:
    """Final outputs, and this shard's trial log and manifest (the same files for one process)."""
    sfx = shard_suffix(rank, world)
    paths = dict(METHODS[RETRIEVAL].outputs(out, name), distractor=out / f"{name}.distractor.json")
    paths.update(trials=out / f"{name}{sfx}.trials.jsonl", manifest=out / f"{name}{sfx}.manifest.json")
    if world > 1:
        paths.update(merged_trials=out / f"{name}.trials.jsonl", merged_manifest=out / f"{name}.manifest.json")
    return paths


def write_distractor(paths: dict, result: DetectionResult) -> list[Path]:
    """A generated task's copies from its distractors (every trial counts: written first)."""
    if not (result.trials and "distractor_scores" in result.trials[0]):
        return []
    write_head_scores(paths["distractor"], result.distractor_counter())
    return [paths["distractor"]]


def refuse_unpassed(paths: dict, result: DetectionResult, threshold: float, written: list[Path],
                    unwritten: tuple[str, ...]) -> None:
    """A sweep where no trial passed, refused in one line that names the files already
    ``written`` and the methods ``unwritten`` (they need passing trials)."""
    if not result.passed():
        raise UserError(
            f"no trial passed (ROUGE-1 recall > {threshold}): wrote {', '.join(map(str, written)) or 'nothing'}; "
            f"not written: {', '.join(unwritten)} (they need passing trials); "
            f"read the responses in {paths['trials']}, try shorter lengths or another --needles"
        )


def merge_shards(paths: dict, manifest: dict, world: int, stats: dict | None = None) -> DetectionResult | None:
    """All shards' trials as one result once every shard has finished (None before that),
    with ``stats``: how this (the merging) shard's sweep ran.

    Built on the files, not a collective: the last shard to finish merges. Shards made with
    other settings are refused.
    """
    records = []
    for r in range(world):
        mpath = Path(str(paths["manifest"]).replace(shard_suffix(manifest["shard"][0], world), shard_suffix(r, world)))
        if not mpath.exists():
            return None
        other = json.loads(mpath.read_text())
        if other.get("fingerprint") != manifest["fingerprint"] or other.get("grid") != manifest["grid"]:
            raise UserError(f"shard {r} ({mpath}) was made with different settings; rerun it with these")
        if other.get("status") != "finished":
            return None
        records += TrialLog(Path(str(mpath).replace(".manifest.json", ".trials.jsonl"))).read()
    records.sort(key=TrialKey.of)
    write_atomic(paths["merged_trials"], "".join(json.dumps(t) + "\n" for t in records))
    return DetectionResult(manifest["model"]["num_layers"], manifest["model"]["num_heads"], records, dict(stats or {}))


class _Log(TrialLog):
    """The trial log, pausing for tests after the N-th record (``cli_common.pause_for_tests``)."""

    written = 0

    def append(self, record: dict) -> None:
        super().append(record)
        self.written += 1
        pause_for_tests(self.written)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    spec, run = from_args(ModelSpec, args), from_args(parsers.DetectRun, args)
    settings = from_args(DetectSettings, args, **(PAPER if run.preset == "paper" else {}))
    setup_logging(run.verbose)
    run.check()
    settings.check()
    rank, world = from_env(run.rank, run.world_size)
    apply_threads(run.threads)
    name = model_name(spec.model_path, run.model_name_suffix)
    task = settings.task[0]
    files = name if task == "single" else f"{name}_{task}"  # a generated task's head files: <model>_<task>.*
    out = Path(run.output_dir)
    methods = settings.methods()
    sweep = bool(of_data(methods, NEEDLE))  # needle trials; induction and echo need none
    needle = sweep_methods(settings) if sweep else ()  # retrieval first: every trial's record holds its scores
    # one forward pass, on the first process only
    repeats = chosen(settings, of_data(methods, REPEAT)) if rank == 0 else ()
    paths = output_paths(out, files, rank, world)
    if task == "single":  # no distractors: no file to guard or write
        paths.pop("distractor")
    own = [p for m in needle[1:] + repeats for p in m.outputs(out, files).values()]  # retrieval's: in paths
    guard_outputs((list(paths.values()) if sweep else []) + own, run.overwrite or run.resume)
    started = utc_now()
    torch.manual_seed(INIT_SEED)
    say = status_printer(run.quiet)
    opened = open_checked(spec, world)
    settings.check_shape(opened.shape, world)
    # every input checked before the weights load
    checked = plan(opened.tokenizer, opened.shape, settings, task=task) if sweep else None
    first = checked.prompt(checked.keys()[0]) if needle else None  # built once, for every needle method
    for m in needle:  # query-focus: its question tokens, found by character offsets
        m.check(first)
    if repeats:
        check_fits(opened.shape, repeats[0].settings())
    model, info = load_checked(opened, say)
    config = dict(settings.applied(), **dataclasses.asdict(run), model_name=name)
    seconds: dict[str, float] = {}
    vocab = model.get_input_embeddings().weight.shape[0]

    def write_method(m: Method, counters: dict, **more) -> list[Path]:
        """``m``'s head-score files (``counters``: what each of its ``outputs`` holds) and its manifest."""
        outs = m.outputs(out, files)
        for key, counter in counters.items():
            write_head_scores(outs[key], counter)
        if "manifest" in outs:  # retrieval's is the sweep's
            counted = len(next(iter(counters["scores"].values()), []))
            manifest = build_manifest("retrieval_head_detection", config, info, settings.seed, started)
            write_atomic(outs["manifest"], dump_json(dict(
                manifest, method=m.name, parameters=m.parameters(settings, opened.tokenizer, vocab),
                scores=str(outs["scores"]), seconds=dict(seconds),
                **dict(more, trials=dict(more.get("trials", {}), counted=counted)))))
        return [outs[key] for key in counters]

    written = []
    if repeats:  # first: a shard that does not merge the sweep returns early
        tell(say, f"running repeated random tokens through the model for {' and '.join(m.name for m in repeats)} ...")
        keys = repeat_keys()  # one forward pass for every repeat method
        rep = repeat_scores(model, opened.tokenizer, repeats[0].settings(), keys)
        family = "+".join(keys)
        seconds[family] = round(rep["seconds"], 3)
        seconds[f"{family} tap"] = round(rep["tap_seconds"], 3)
        written += [p for m in repeats for p in write_method(m, m.counters(rep))]
    if sweep:
        result = sweep_run(paths, settings, run, checked, model, info, opened, config, started, (rank, world), say)
        if result is None:
            return 0
        seconds["sweep"] = round(result.stats.get("seconds", 0.0), 3)
        for m in (m for m in needle if m.question):  # the prefill tap of the question's rows
            seconds[f"{m.name} tap"] = round(result.stats.get("tap_s", 0.0), 3)
        report(result, run.top)
        if "adaptive" in result.stats:
            print(adaptive_summary(result.stats["adaptive"]))
        # what the sweep's methods' manifests record besides the method: its trials and how it stopped
        more = dict(haystacks=checked.pairing(), trials=dict(total=len(result.trials), passed=len(result.passed())))
        if "adaptive" in result.stats:
            more["stopping"] = result.stats["adaptive"]
        # the methods that count every trial (query-focus) and a task's distractor file first: written before a
        # sweep with no passing trial is refused; then the methods that need passing trials (retrieval, needle-mass)
        written += [p for m in needle if m.counts == ALL for p in write_method(m, m.counters(result, info), **more)]
        written += write_distractor(paths, result)
        passing = tuple(m for m in needle if m.counts == PASSING)
        refuse_unpassed(paths, result, settings.rouge_threshold, written, tuple(m.name for m in passing))
        written += [p for m in passing for p in write_method(m, m.counters(result, info), **more)]
    print(f"\nwrote {', '.join(map(str, written))}")
    if methods != (RETRIEVAL,):
        print("seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    return 0


def sweep_run(paths, settings, run, checked, model, info, opened, config, started, shard,
              say: Status | None = None) -> DetectionResult | None:
    """The needle trials (resumable, sharded): the result, or None on a shard that does not merge."""
    rank, world = shard
    fp = dict(settings_fingerprint(settings, checked.needles), model=model_identity(info))  # the plan's needles
    done = resumed_trials(paths, fp) if run.resume else {}
    if run.overwrite:
        for p in paths.values():
            p.unlink(missing_ok=True)
    manifest = build_manifest("retrieval_head_detection", config, info, settings.seed, started)
    manifest.update(fingerprint=fp, status="running", shard=[rank, world], grid=[checked.lengths, checked.depths],
                    haystacks=checked.pairing())
    write_atomic(paths["manifest"], dump_json(manifest))  # first, so a killed run can be resumed
    log = _Log(paths["trials"])
    t0 = time.perf_counter()
    result = detect(model, opened.tokenizer, settings, on_trial=log.append, progress=not run.quiet, done=done,
                    checked=checked, shard=(rank, world), status=say)
    result.stats["seconds"] = time.perf_counter() - t0
    # Trials finish in insertion and batch order; the finished log reads in canonical order. An adaptive
    # sweep's log holds exactly the trials its result used (a resumed full log may hold more), so the
    # trial log and <model>.json describe the same trials.
    final = result.trials if "adaptive" in result.stats else log.read()
    write_atomic(paths["trials"], "".join(json.dumps(t) + "\n" for t in sorted(final, key=TrialKey.of)))
    manifest.update(build_manifest("retrieval_head_detection", config, info, settings.seed, started),
                    status="finished", trials={"total": len(result.trials), "passed": len(result.passed()),
                                               "resumed": len(done)}, sweep=result.stats)
    if "adaptive" in result.stats:
        manifest["stopping"] = result.stats["adaptive"]
    write_atomic(paths["manifest"], dump_json(manifest))
    if world > 1:
        result = merge_shards(paths, manifest, world, result.stats)
        if result is None:
            print(f"shard {rank} of {world} finished; the last shard to finish writes {paths['scores']}")
            return None
        write_atomic(paths["merged_manifest"], dump_json(dict(manifest, shard=None, shards=world)))
    return result


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``main`` behind the error boundary (``common.run_cli``); ``prog``: the command the user typed."""
    return run_cli(partial(main, prog=prog), argv)
