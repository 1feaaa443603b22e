"""Figures say what they show: each title names the model, the task, the metric and the
conditions; the metric follows the task (the single needle's ROUGE-1 recall, a generated
task's string match); the seed count reads right; no text leaves the figure."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Annotation, Text

from retrieval_head.cli import heads
from retrieval_head.experiments.compress import curves
from retrieval_head.plots import heads as head_plots
from retrieval_head.plots import niah as plot
from retrieval_head.plots.compress import curve_figure
from retrieval_head.plots.judge import judge_figure

MODEL = "Meta-Llama-3.1-8B-Instruct-with-a-long-suffix"
TOP2 = {"kind": "top", "k": 2, "mode": "uniform", "phase": "decode"}


def record(length, depth, score, mask, **more):
    return {"model": MODEL, "context_length": length, "depth_percent": depth, "score": score, "mask": mask, **more}


def folder(root: Path, name: str, records: list[dict]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for i, r in enumerate(records):
        (d / f"r{i}.json").write_text(json.dumps(r))
    return d


def texts(fig) -> list[Text]:
    """Every text the figure draws, in its final layout: recorded as the Agg canvas draws
    them (tick labels outside the axes' limits exist but are not drawn)."""
    FigureCanvasAgg(fig)
    drawn, draw = [], Text.draw

    def record(self, renderer):
        drawn.append(self)
        return draw(self, renderer)

    with mock.patch.object(Text, "draw", record):
        fig.canvas.draw()
    return [t for t in dict.fromkeys(drawn) if t.get_visible() and t.get_text().strip()]


def outside(fig) -> list[str]:
    """The texts whose box leaves the figure."""
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    out = []
    for t in texts(fig):
        b = t.get_window_extent(renderer)
        if b.x0 < box.x0 - 0.5 or b.x1 > box.x1 + 0.5 or b.y0 < box.y0 - 0.5 or b.y1 > box.y1 + 0.5:
            out.append(t.get_text())
    return out


def all_text(fig) -> str:
    return " ".join(" ".join(t.get_text().split()) for t in texts(fig))


def test_a_task_heatmap_draws_string_match_and_says_so(tmp_path):
    """A multikey record's ROUGE-1 (0) is not its score: its string match (100) is."""
    mk = folder(tmp_path, "mk", [record(1000, 50, 0.0, TOP2, task="multikey", string_match=100.0)])
    g = plot.load_results(mk)
    assert g.scores.tolist() == [[100.0]] and g.mean == 100.0
    assert g.title() == f"{MODEL}, multikey: string match x100, top-2 heads masked (uniform, decode); mean 100.0"
    fig = plot.heatmap_figure(g)
    assert "string match x100" in [t.get_text() for t in texts(fig)]  # the colour bar's label
    single = plot.load_results(folder(tmp_path, "single", [record(1000, 50, 40.0, TOP2)]))
    assert (single.task, single.metric, single.mean) == ("single needle", "ROUGE-1 recall x100", 40.0)


def test_side_by_side_title_names_model_task_metric_and_conditions(tmp_path):
    none = {"kind": "none", "k": 0}
    grids = [plot.load_results(folder(tmp_path, n, [record(1000, 50, s, m)]))
             for n, s, m in (("none", 100.0, none), ("top", 20.0, TOP2))]
    fig = plot.side_by_side_figure(grids)
    title = " ".join(fig._suptitle.get_text().split())
    assert title == f"{MODEL}, single needle: ROUGE-1 recall x100 under 2 conditions of masking"
    words = all_text(fig)
    assert "no heads masked" in words and "top-2 heads masked (uniform, decode)" in words
    assert "ROUGE-1 recall x100: difference" in words
    assert outside(fig) == []


def stream(k, kind, seed, score, kept, task=None, **mask):
    m = {"kind": kind, "k": k, "seed": seed, "mode": "stream", "unit": "kv", "sink": 4, "recent": 64,
         "phase": "decode", "kv_kept": kept, **mask}
    more = {"task": task, "string_match": score, "score": 0.0} if task else {"score": score}
    return dict(record(2000, 50, 0.0, m), **more)


def compression_run(root: Path, seeds: int, task: str | None = None) -> list[Path]:
    """A full cache at 100, top-K kept up to every head (kv_kept 1.0: the right edge, score
    100: the top), the real cache's MiB on each point; random-K over ``seeds`` seeds."""
    dirs = [folder(root, "none", [dict(record(2000, 50, 0.0, {"kind": "none", "k": 0}),
                                       **({"task": task, "string_match": 100.0} if task else {"score": 100.0}))])]
    for k, kept, score in ((0, 0.03, 0.0), (9, 0.1, 40.0), (27, 0.5, 95.0), (270, 1.0, 100.0)):
        rec = stream(k, "keep_top", None, score, kept, task, cache="real", kv_bytes=int(kept * 6.5 * 2**20),
                     kv_bytes_full=int(6.5 * 2**20))
        dirs.append(folder(root, f"top{k}", [rec]))
    for s in range(seeds):
        dirs.append(folder(root, f"r9_{s}", [stream(9, "keep_random", s, 10.0 * s, 0.1, task)]))
    return dirs


@pytest.mark.parametrize("task", [None, "multikey"])
def test_the_compression_figure_names_task_metric_and_setting(tmp_path, task):
    c = curves(compression_run(tmp_path, seeds=3, task=task))
    fig = curve_figure(c)
    ax = fig.axes[0]
    metric = "string match x100" if task else "ROUGE-1 recall x100"
    assert ax.get_ylabel() == metric  # was "needle score (ROUGE-1 recall x100)" on every task
    assert c["top"][-1][1] == 100.0 and c["reference"] == 100.0  # a task's score is its string match
    title = " ".join(fig._suptitle.get_text().split())  # wrapped to the figure's width
    assert title == (f"{MODEL}, {task or 'single needle'}: {metric} vs KV cache kept KV heads kept full, the rest "
                     "streamed (sink 4 + recent 64, phase decode); 2000 tokens")
    assert "K random heads kept full (mean of 3 seeds)" in all_text(fig)


def test_one_seed_is_one_seed(tmp_path):
    fig = curve_figure(curves(compression_run(tmp_path, seeds=1)))
    words = all_text(fig)
    assert "K random heads kept full (1 seed)" in words and "seeds" not in words  # no band over one seed
    judge = judge_figure({"none": 90.0, "random": {5: [60.0]}, "retrieval": {5: [10.0]}}, [5], "t", "x")
    assert "random-K (1 seed)" in all_text(judge) and "seeds" not in all_text(judge)
    three = judge_figure({"none": 90.0, "random": {5: [60.0, 50.0, 70.0]}, "retrieval": {5: [10.0]}}, [5], "t")
    assert "random-K (min-max over 3 seeds)" in all_text(three)


def test_no_text_leaves_the_compression_figure(tmp_path):
    """The real cache's labels ("270: 6.50 MiB" at the right edge and the top) ran over the
    axes' edge, or off the figure; each point's label stays inside its axes."""
    fig = curve_figure(curves(compression_run(tmp_path, seeds=2)))
    assert outside(fig) == []
    renderer, axes = fig.canvas.get_renderer(), fig.axes[0].get_window_extent()
    labels = {t.get_text(): t.get_window_extent(renderer) for t in texts(fig) if isinstance(t, Annotation)}
    assert sorted(labels) == ["0: 0.19 MiB", "270: 6.50 MiB", "27: 3.25 MiB", "9: 0.65 MiB"]
    for text, b in labels.items():
        assert axes.x0 <= b.x0 and b.x1 <= axes.x1 and axes.y0 <= b.y0 and b.y1 <= axes.y1, text


def test_a_head_heatmap_names_the_method_of_its_file(tmp_path, monkeypatch):
    drawn = {}
    from retrieval_head.plots import niah  # heads draws through it, imported when a figure is drawn

    monkeypatch.setattr(niah, "render", lambda fig, out: drawn.setdefault("fig", fig) and Path(out))
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "M.query-focus.json"
    f.write_text(json.dumps({f"{layer}-{h}": [0.1 * h] for layer in range(2) for h in range(3)}) + "\n")
    assert heads.main(["heatmap", str(f)]) == 0
    fig = drawn["fig"]
    words = all_text(fig)
    assert "M.query-focus: query-focus score per head" in words and "retrieval" not in words
    assert "query-focus score (mean over trials)" in [t.get_text() for t in texts(fig)]  # the colour bar
    assert outside(head_plots.heads_figure(torch.rand(30, 9), "M: echo score per head",
                                      label="echo score (mean over seeds)")) == []


def test_a_streaming_heatmap_says_what_was_kept(tmp_path):
    """--keep_full 9 was titled "keep_top-9 heads masked (stream, decode)", and streaming every
    head (k 0) "no heads masked", taken as the side-by-side's baseline."""
    keep = plot.load_results(folder(tmp_path, "top9", [stream(9, "keep_top", None, 30.0, 0.16)]))
    assert keep.mask == "keep top-9 KV heads full, rest streamed (4+64, decode)" and not keep.baseline
    everything = plot.load_results(folder(tmp_path, "all", [stream(0, "keep_top", None, 0.0, 0.07)]))
    assert everything.mask == "every head streamed (4+64, decode)" and not everything.baseline
    rand = plot.load_results(folder(tmp_path, "r9", [stream(9, "keep_random", 2, 0.0, 0.16)]))
    assert rand.mask == "keep random-9 KV heads full, rest streamed (4+64, decode, seed 2)"
