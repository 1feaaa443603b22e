"""``needle_in_haystack_with_mask.py``: the needle test with retrieval heads masked.

    python needle_in_haystack_with_mask.py --mask_top 10 --s 500 --e 2000
    python needle_in_haystack_with_mask.py --mask_top 0 10 -10 --seeds 0 1 2   # one process, shared prefills

Each condition writes a folder under ``--output_dir`` (default ``results/graph/``):
``<model>`` (K = 0), ``<model>_block_top{K}``, ``<model>_block_random{K}`` (``_seed{S}``
with ``--seeds``), plus ``_zero`` / ``_all`` for non-default mask mode / phase. Each holds
one JSON per (length, depth) in the original's fields plus the mask, a manifest.json and
heatmap.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from .attention import MASK_MODES, MASK_PHASES
from .cli_common import (add_grid_args, add_model_args, add_scale_args, apply_threads, check_output_flags,
                         grid_from_args, guard_outputs, model_spec, run_cli, setup_logging)
from .decode import check_supported, stop_token_mask
from .detect import Haystacks, check_grid
from .errors import UserError
from .haystack import Needle, load_needles
from .manifest import build_manifest, utc_now
from .models import load_model, max_positions, model_identity, model_name
from .niah import Condition, NiahSettings, make_conditions, run_niah
from .prompt import uses_chat_template
from .shard import assign, from_env, local_device, shard_suffix
from .scores_io import dump_json, load_head_scores, write_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="needle_in_haystack_with_mask.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_grid_args(p, s_default=1000, e_default=5000)
    m = p.add_argument_group("masking")
    m.add_argument("--mask_top", "--mask_topk", dest="mask_top", type=int, nargs="+", default=[0],
                   help="K>0: top-K retrieval heads; K<0: |K| random heads; 0: none (several values allowed)")
    m.add_argument("--head_score", default=None, help="head_score JSON (default: head_score/<model>.json)")
    m.add_argument("--mask_mode", default="uniform", choices=MASK_MODES,
                   help="uniform: zero the query (attend uniformly, the original); zero: zero the head's output")
    m.add_argument("--mask_phase", default="decode", choices=MASK_PHASES,
                   help="decode: mask while decoding only (the original); all: the prefill too")
    m.add_argument("--mask_unit", default="query", choices=["query", "kv"],
                   help="kv: K counts KV heads (GQA groups), ranked by head_score/<model>.kv_max.json")
    m.add_argument("--sequential_conditions", action="store_true",
                   help="decode the conditions of a cell one by one (one prefill per cell), not as a batch")
    m.add_argument("--seed", type=int, default=0, help="seed of the random-head draw")
    m.add_argument("--seeds", type=int, nargs="+", default=None, help="several random draws, one folder each")
    n = p.add_argument_group("needle")
    n.add_argument("--needle", default=None)
    n.add_argument("--question", default=None)
    n.add_argument("--real_needle", default=None, help="the answer, inside --needle")
    n.add_argument("--needle_id", type=int, default=0, help="which needle of --needles (0-based)")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", default="results/graph")
    o.add_argument("--overwrite", action="store_true", help="replace existing results of these conditions")
    o.add_argument("--resume", action="store_true", help="continue a run: skip cells already written")
    o.add_argument("--no_plot", action="store_true", help="skip heatmap.png")
    o.add_argument("--quiet", action="store_true")
    o.add_argument("--verbose", action="store_true")
    add_scale_args(p)
    return p


def pick_needle(args) -> Needle:
    given = [args.needle, args.question, args.real_needle]
    if any(given):
        if not all(given):
            raise UserError("--needle, --question and --real_needle go together; give all three")
        n = Needle(0, args.needle.strip(), args.question.strip(), args.real_needle.strip())
        n.answer_span()
        return n
    needles = load_needles(args.needles)
    if not 0 <= args.needle_id < len(needles):
        raise UserError(f"--needle_id {args.needle_id}: {args.needles or 'the needles file'} has {len(needles)} needles")
    return needles[args.needle_id]


def head_scores_for(args, name: str, shape) -> torch.Tensor | None:
    if all(k == 0 for k in args.mask_top):
        return None
    default = f"{name}.kv_max.json" if args.mask_unit == "kv" else f"{name}.json"
    return load_head_scores(Path(args.head_score or Path("head_score") / default), shape)


def summarize(conditions: list[Condition], results: dict[str, list[dict]]) -> None:
    print("\nmean score (ROUGE-1 recall x100) per condition:")
    means = {}
    for c in conditions:
        recs = results[c.folder]
        means[c.folder] = statistics.fmean(r["score"] for r in recs) if recs else float("nan")
        print(f"  {means[c.folder]:6.1f}  {c.label():<55} {c.folder}")
    randoms = [means[c.folder] for c in conditions if c.kind == "random"]
    if len(randoms) > 1:
        print(f"  random draws: mean {statistics.fmean(randoms):.1f}, sd {statistics.stdev(randoms):.1f} "
              f"over {len(randoms)} seeds")


def record_path(folder: Path, model: str, length: int, depth: int) -> Path:
    """The original's file name for one (length, depth) result."""
    return folder / f"{model}_len_{length}_depth_{depth * 100}.json"


def prepare_folders(out: Path, conditions, manifest: dict, args, mine: list, sfx: str) -> frozenset:
    """Write each folder's (shard) manifest first; on --resume check it and return this shard's
    done cells. --overwrite removes the old results of this shard's cells only, so a shard
    started later never deletes another's fresh results."""
    name = manifest["config"]["model_name"]
    done = set(mine)
    for c in conditions:
        folder = out / c.folder
        fp = dict(manifest["fingerprint"], condition=c.describe())
        old = folder / f"manifest{sfx}.json"
        if args.resume and old.exists():
            if json.loads(old.read_text()).get("fingerprint") != json.loads(json.dumps(fp)):
                raise UserError(f"{folder} was made with different settings (model, needle, mask or decoding); "
                                "rerun with those settings or use --overwrite")
        elif args.overwrite:
            stale = folder.glob(f"{name}_len_*_depth_*.json") if not sfx else \
                (record_path(folder, name, *cell) for cell in mine)
            for f in [*stale, folder / "heatmap.png", folder / "manifest.json"]:
                f.unlink(missing_ok=True)
        done &= {cell for cell in mine if record_path(folder, name, *cell).exists()}
        write_atomic(old, dump_json(dict(manifest, fingerprint=fp, condition=c.describe())))
    return frozenset(done) if args.resume else frozenset()


def complete(out: Path, conditions, manifest: dict, cells) -> bool:
    """Whether every cell of every condition is written; refuses shards of other settings."""
    name, world = manifest["config"]["model_name"], manifest["shard"][1]
    for c in conditions:
        for r in range(world if world > 1 else 0):
            m = out / c.folder / f"manifest{shard_suffix(r, world)}.json"
            mine = json.loads((out / c.folder / f"manifest{shard_suffix(manifest['shard'][0], world)}.json").read_text())
            if m.exists() and json.loads(m.read_text()).get("fingerprint") != mine["fingerprint"]:
                raise UserError(f"shard {r} ({m}) was made with different settings; rerun it with these")
    return all(record_path(out / c.folder, name, *cell).exists() for c in conditions for cell in cells)


def finish(out: Path, conditions, manifest: dict, cells, sfx: str, plot: bool) -> dict[str, list[dict]]:
    """Read back every folder's results for this grid, mark it finished, draw its heatmap."""
    from .plot import heatmap

    name, results = manifest["config"]["model_name"], {}
    for c in conditions:
        folder = out / c.folder
        results[c.folder] = [json.loads(record_path(folder, name, *cell).read_text()) for cell in cells]
        m = json.loads((folder / f"manifest{sfx}.json").read_text())
        write_atomic(folder / "manifest.json", dump_json(dict(m, status="finished", finished_utc=utc_now())))
        if plot:
            heatmap(folder)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    check_output_flags(args)
    rank, world = from_env(args.rank, args.world_size)
    apply_threads(args)
    needle, (lengths, depths) = pick_needle(args), grid_from_args(args)
    name = model_name(args.model_path, args.model_name_suffix)
    seeds = args.seeds or [args.seed]
    out, sfx = Path(args.output_dir), shard_suffix(rank, world)
    started = utc_now()
    model, tok, info = load_model(model_spec(args, local_device(args.device, world)))
    units = info["num_kv_heads"] if args.mask_unit == "kv" else info["num_heads"]
    group = info["num_heads"] // info["num_kv_heads"] if args.mask_unit == "kv" else None
    conditions = make_conditions(name, args.mask_top, head_scores_for(args, name, (info["num_layers"], units)),
                                 args.mask_mode, args.mask_phase, seeds, seed_folders=args.seeds is not None,
                                 group=group)
    guard_outputs([out / c.folder / f"manifest{sfx}.json" for c in conditions], args.overwrite or args.resume)
    hay = Haystacks(tok, uses_chat_template(tok, args.chat_template), Path(args.haystack_dir) if args.haystack_dir else None)
    check_grid(model, hay, [needle], lengths, args.max_new_tokens, max_positions(model))
    check_supported(model)
    config = dict(vars(args), context_lengths=lengths, depth_percents=depths, needle=needle.needle,
                  question=needle.question, real_needle=needle.real_needle, model_name=name)
    manifest = build_manifest("needle_in_haystack_with_mask", config, info, args.seed, started)
    manifest.update(status="running", shard=[rank, world], fingerprint={
        "needle": [needle.needle, needle.question, needle.real_needle], "haystack_dir": args.haystack_dir,
        "chat_template": args.chat_template, "max_new_tokens": args.max_new_tokens, "prefill_chunk": args.prefill_chunk,
        "grid": [lengths, depths], "world_size": world,
        "model": model_identity(info)})
    cells = [(L, d) for L in lengths for d in depths]
    mine = assign(cells, lambda cell: cell[0], world)[rank]
    skip = prepare_folders(out, conditions, manifest, args, mine, sfx) | (set(cells) - set(mine))
    st = NiahSettings(max_new_tokens=args.max_new_tokens, prefill_chunk=args.prefill_chunk, model_name=name,
                      batch_conditions=not args.sequential_conditions, batch_tokens=args.batch_tokens)
    save = lambda c, r: write_atomic(record_path(out / c.folder, name, r["context_length"], r["depth_percent"]),  # noqa: E731
                                     dump_json(r))
    run_niah(model, tok, hay.for_needle(needle), needle, lengths, depths, conditions, stop_token_mask(model, tok),
             st, on_record=save, progress=not args.quiet, skip=frozenset(skip))
    if not complete(out, conditions, manifest, cells):
        print(f"shard {rank} of {world} finished; the last shard to finish writes the manifests and heatmaps")
        return 0
    results = finish(out, conditions, manifest, cells, sfx, plot=not args.no_plot)
    summarize(conditions, results)
    print(f"\nwrote {', '.join(str(out / c.folder) for c in conditions)}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)
