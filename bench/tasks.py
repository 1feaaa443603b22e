"""Markdown tables of a masked run over tasks (docs/results.md, "Retrieval tasks").

    python needle_in_haystack_with_mask.py --task single multikey multivalue multiquery vt \\
        --context_lengths 500 1000 --depth_percents 0 50 100 --mask_top 0 10 -10 --output_dir OUT
    python bench/tasks.py OUT SmolLM2-135M-Instruct

Prints (1) unmasked string match (x100) per task, length and depth; (2) per task, the mean
string match, the share of trials with every value returned, and ROUGE-1 recall under none,
top-10 and random-10 masking.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

TASKS = ("single", "multikey", "multivalue", "multiquery", "vt")


def match(r: dict) -> float:
    """String match x100: a task record's own, else the single needle's answer in the response."""
    if "string_match" in r:
        return r["string_match"]
    return 100.0 * (r["real_needle"].lower() in r["model_response"].lower())


def folder(out: Path, model: str, cond: str, task: str) -> Path:
    return out / (model + cond + ("" if task == "single" else f"_{task}"))


def records(path: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(path.glob("*_len_*_depth_*.json"))]


def main(out: Path, model: str, conds: tuple[str, ...] = ("", "_block_top10", "_block_random10")) -> None:
    recs = {t: records(folder(out, model, "", t)) for t in TASKS}
    cells = sorted({(r["context_length"], r["depth_percent"]) for rs in recs.values() for r in rs})
    print("| task | " + " | ".join(f"{L} @ {d}%" for L, d in cells) + " | mean |")
    print("|---|" + "---:|" * (len(cells) + 1))
    for t, rs in recs.items():
        by = {(r["context_length"], r["depth_percent"]): match(r) for r in rs}
        print(f"| {t} | " + " | ".join(f"{by[c]:.0f}" for c in cells) + f" | {statistics.fmean(by.values()):.1f} |")
    print()
    names = {"": "none", "_block_top10": "top-10", "_block_random10": "random-10"}
    print("| task | " + " | ".join(f"{names[c]}: match / all / ROUGE" for c in conds) + " |")
    print("|---|" + "---:|" * len(conds))
    for t in TASKS:
        row = []
        for c in conds:
            rs = records(folder(out, model, c, t))
            m = [match(r) for r in rs]
            row.append(f"{statistics.fmean(m):.1f} / {100 * statistics.fmean(x == 100 for x in m):.0f} / "
                       f"{statistics.fmean(r['score'] for r in rs):.1f}")
        print(f"| {t} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
