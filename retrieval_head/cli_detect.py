"""``retrieval_head_detection.py``: detect retrieval heads and write ``head_score/<model>.json``.

    python retrieval_head_detection.py --model_path P --s 0 --e 5000

Outputs in ``--output_dir`` (default ``head_score/``):
  <model>.json            the original's one-line {"layer-head": [trial scores]} file
  <model>.trials.jsonl    one record per trial, counted or not (appended as trials finish)
  <model>.manifest.json   resolved config, model, versions, git commit, times
  <model>.kv_max.json, <model>.kv_mean.json   GQA models: per-KV-head scores, same format
                          (each trial's group max / mean, listed per counted trial)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from .cli_common import (PRESET_PAPER_LENGTHS, add_grid_args, add_model_args, add_scale_args, apply_threads,
                         check_output_flags, grid_from_args, guard_outputs, model_spec, run_cli, setup_logging)
from .detect import DetectionResult, DetectSettings, detect, plan
from .errors import UserError
from .haystack import load_needles
from .manifest import build_manifest, utc_now
from .models import load_model, model_identity, model_name
from .shard import from_env, local_device, shard_suffix
from .scores_io import TrialLog, dump_json, format_top_table, write_atomic, write_head_scores

DEFAULTS = DetectSettings()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrieval_head_detection.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_grid_args(p, s_default=0, e_default=5000)
    g = p.add_argument_group("scoring")
    g.add_argument("--score", default=DEFAULTS.score, choices=["count", "set"],
                   help="count: every copy counts (the reference); set: each needle position once (the paper)")
    g.add_argument("--rouge_threshold", type=float, default=DEFAULTS.rouge_threshold,
                   help="a trial counts when ROUGE-1 recall x100 exceeds this")
    g.add_argument("--prefix_reuse", choices=["on", "off"], default="on" if DEFAULTS.prefix_reuse else "off",
                   help="on: run trials in insertion order, prefilling only what follows the prefix they share "
                        "(same scores and responses as off)")
    g.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: lengths linspace(1000, 50000, 20), plain prompts (no chat template)")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", default="head_score")
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs of this model")
    o.add_argument("--resume", action="store_true",
                   help="continue a run from its trial log (same settings; the grid may grow)")
    o.add_argument("--save_prompts", action="store_true", help="store each trial's prompt_ids in the trial log")
    o.add_argument("--seed", type=int, default=42, help="recorded; decoding is greedy")
    add_scale_args(p)
    o.add_argument("--top", type=int, default=20, help="rows of the printed top-heads table")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--verbose", action="store_true")
    return p


def settings_from_args(args) -> DetectSettings:
    if args.preset == "paper":
        args.s, args.e, args.num_lengths = PRESET_PAPER_LENGTHS
        args.context_lengths, args.chat_template = None, "off"
    lengths, depths = grid_from_args(args)
    return DetectSettings(context_lengths=tuple(lengths), depth_percents=tuple(depths),
                          haystack_dir=args.haystack_dir, needles=args.needles, chat_template=args.chat_template,
                          max_new_tokens=args.max_new_tokens, rouge_threshold=args.rouge_threshold,
                          score=args.score, prefill_chunk=args.prefill_chunk, save_prompts=args.save_prompts,
                          prefix_reuse=args.prefix_reuse == "on", batch_tokens=args.batch_tokens)


def report(result: DetectionResult, top: int) -> None:
    n, passed = len(result.trials), len(result.passed())
    print(f"\n{passed} of {n} trials passed (ROUGE-1 recall above the threshold)")
    if passed:
        print(f"top {top} retrieval heads (mean score over passing trials):")
        print(format_top_table(result.mean_scores(), top))


def fingerprint(settings: DetectSettings, info: dict) -> dict:
    """Everything that changes a trial's record besides its (needle, length, depth) key."""
    keep = ("haystack_dir", "chat_template", "max_new_tokens", "rouge_threshold", "score", "prefill_chunk")
    fp = {k: getattr(settings, k) for k in keep}
    fp["needles"] = [dataclasses.asdict(n) | {"haystack": str(n.haystack) if n.haystack else None}
                     for n in load_needles(settings.needles)]
    fp["model"] = model_identity(info)
    return json.loads(json.dumps(fp))  # as it reads back from the manifest


def trial_key(t: dict) -> tuple[int, int, int]:
    return (t["needle_id"], t["context_length"], t["depth_percent"])


def resumed_trials(paths: dict, fp: dict) -> dict:
    """Finished trials of the run being resumed (refusing one made with other settings)."""
    if not paths["trials"].exists():
        return {}
    old = json.loads(paths["manifest"].read_text()) if paths["manifest"].exists() else {}
    if old.get("fingerprint") != fp:
        raise UserError(f"{paths['trials']} was made with different settings (model, needles, haystack or "
                        "decoding/scoring options); rerun with those settings or use --overwrite")
    log = TrialLog(paths["trials"])
    records = log.read()
    write_atomic(paths["trials"], "".join(json.dumps(r) + "\n" for r in records))  # drop a torn last line
    return {trial_key(r): r for r in records}


def output_paths(out: Path, name: str, rank: int, world: int) -> dict[str, Path]:
    """Final outputs, and this shard's trial log and manifest (the same files for one process)."""
    sfx = shard_suffix(rank, world)
    paths = {k: out / f"{name}{ext}" for k, ext in (("scores", ".json"), ("kv_max", ".kv_max.json"),
                                                      ("kv_mean", ".kv_mean.json"))}
    paths.update(trials=out / f"{name}{sfx}.trials.jsonl", manifest=out / f"{name}{sfx}.manifest.json")
    if world > 1:
        paths.update(merged_trials=out / f"{name}.trials.jsonl", merged_manifest=out / f"{name}.manifest.json")
    return paths


def write_results(paths: dict, result: DetectionResult, info: dict, threshold: float) -> list[Path]:
    """The head-score files of a finished sweep (refusing a sweep where no trial passed)."""
    if not result.passed():
        raise UserError(
            f"no trial passed (ROUGE-1 recall > {threshold}): no head scores written; "
            f"read the responses in {paths['trials']}, try shorter lengths or another --needles"
        )
    write_head_scores(paths["scores"], result.head_counter())
    written = [paths["scores"]]
    kv = info["num_kv_heads"]
    if kv < info["num_heads"]:  # GQA: the granularity KV-cache compression works at
        for agg in ("max", "mean"):
            written.append(paths[f"kv_{agg}"])
            write_head_scores(written[-1], result.kv_head_counter(kv, agg))
    return written


def merge_shards(paths: dict, manifest: dict, world: int) -> DetectionResult | None:
    """All shards' trials as one result once every shard has finished (None before that).

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
    records.sort(key=trial_key)
    write_atomic(paths["merged_trials"], "".join(json.dumps(t) + "\n" for t in records))
    return DetectionResult(manifest["model"]["num_layers"], manifest["model"]["num_heads"], records)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    check_output_flags(args)
    rank, world = from_env(args.rank, args.world_size)
    apply_threads(args)
    settings = settings_from_args(args)
    name = model_name(args.model_path, args.model_name_suffix)
    out = Path(args.output_dir)
    paths = output_paths(out, name, rank, world)
    guard_outputs(list(paths.values()), args.overwrite or args.resume)
    started = utc_now()
    torch.manual_seed(args.seed)
    model, tokenizer, info = load_model(model_spec(args, local_device(args.device, world)))
    checked = plan(model, tokenizer, settings)  # every input checked before any file is written
    fp = fingerprint(settings, info)
    done = resumed_trials(paths, fp) if args.resume else {}
    if args.overwrite:
        for p in paths.values():
            p.unlink(missing_ok=True)
    config = dict(dataclasses.asdict(settings), model_name=name, output_dir=str(out), preset=args.preset)
    manifest = build_manifest("retrieval_head_detection", config, info, args.seed, started)
    manifest.update(fingerprint=fp, status="running", shard=[rank, world],
                    grid=[list(settings.context_lengths), list(settings.depth_percents)])
    write_atomic(paths["manifest"], dump_json(manifest))  # first, so a killed run can be resumed
    log = TrialLog(paths["trials"])
    result = detect(model, tokenizer, settings, on_trial=log.append, progress=not args.quiet, done=done,
                    checked=checked, shard=(rank, world))
    # Trials finish in insertion and batch order; the finished log reads in canonical order.
    write_atomic(paths["trials"], "".join(json.dumps(t) + "\n" for t in sorted(log.read(), key=trial_key)))
    manifest.update(build_manifest("retrieval_head_detection", config, info, args.seed, started),
                    status="finished", trials={"total": len(result.trials), "passed": len(result.passed()),
                                               "resumed": len(done)}, sweep=result.stats)
    write_atomic(paths["manifest"], dump_json(manifest))
    if world > 1:
        result = merge_shards(paths, manifest, world)
        if result is None:
            print(f"shard {rank} of {world} finished; the last shard to finish writes {paths['scores']}")
            return 0
        write_atomic(paths["merged_manifest"], dump_json(dict(manifest, shard=None, shards=world)))
    report(result, args.top)
    written = write_results(paths, result, info, settings.rouge_threshold)
    print(f"\nwrote {', '.join(map(str, written))}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)
