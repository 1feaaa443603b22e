"""Draw the head-wise cache's bench table (docs/results.md) as a figure: cache bytes and decode
step time against context length, the in-place cache vs the head-wise cache at 10% / 25% of
the KV heads full (batch 1 and 4).

It reads the markdown table ``bench/headwise_memory.py`` printed into docs/results.md (columns:
tokens, batch, KV heads full, bytes ratio, =predicted, step ms in-place, DynamicCache,
in-place grouped, head-wise, ...), so the figure always shows the numbers of record::

    .venv/bin/python bench/headwise_figure.py   # writes docs/figures/headwise_memory.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## The head-wise KV cache: bytes, decode step, peak memory"


def rows(text: str) -> list[dict]:
    """The bench table's rows under ``SECTION``: tokens, batch, fraction full, bytes ratio and
    step ms of the in-place and head-wise caches."""
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]  # this section only
    out = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 9 or not cells[0].isdigit():
            continue
        out.append({"tokens": int(cells[0]), "batch": int(cells[1]), "full": cells[2].split("(")[1].rstrip(")"),
                    "bytes": float(cells[3]), "inplace_ms": float(cells[5]), "headwise_ms": float(cells[8])})
    return out


def main(out: Path = ROOT / "docs" / "figures" / "headwise_memory.png") -> Path:
    data = rows((ROOT / "docs" / "results.md").read_text())
    fig, (mem, step) = plt.subplots(1, 2, figsize=(10, 4))
    for batch, style in ((1, "--"), (4, "-")):
        sel = [r for r in data if r["batch"] == batch]
        lengths = sorted({r["tokens"] for r in sel})
        # the in-place cache holds every key: bytes ratio 1 by definition
        mem.plot(lengths, [1.0] * len(lengths), style, color="black", label=f"in-place, batch {batch}")
        first = {r["tokens"]: r["inplace_ms"] for r in sel}
        step.plot(lengths, [first[n] for n in lengths], style, color="black", label=f"in-place, batch {batch}")
        for full, color in (("10%", "tab:blue"), ("25%", "tab:orange")):
            rs = sorted((r for r in sel if r["full"] == full), key=lambda r: r["tokens"])
            label = f"head-wise {full} full, batch {batch}"
            mem.plot([r["tokens"] for r in rs], [r["bytes"] for r in rs], style, color=color, marker="o", label=label)
            step.plot([r["tokens"] for r in rs], [r["headwise_ms"] for r in rs], style, color=color, marker="o",
                      label=label)
    mem.set(xlabel="context tokens", ylabel="cache bytes / in-place cache", ylim=(0, 1.05),
            title="KV cache held (bytes as predicted)")
    step.set(xlabel="context tokens", ylabel="decode step (ms, CPU)", title="decode step time")
    step.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M: head-wise KV cache (sink 4 + recent 64, phase decode) vs the in-place cache")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(*(Path(a) for a in sys.argv[1:])))
