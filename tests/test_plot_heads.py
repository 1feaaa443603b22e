"""Heatmaps of NIAH results folders and head-score analysis: known answers on hand-made data."""

import json
import math
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from retrieval_head.analysis import compare as stats
from retrieval_head.cli import heads
from retrieval_head.cli import plot as plot_cli
from retrieval_head.plots import heads as head_plots
from retrieval_head.plots import niah as plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/head_score"

TOP10 = {"kind": "top", "k": 10, "heads": [[3, 1], [5, 2]], "mode": "uniform", "phase": "decode", "seed": 0}
NONE = {"kind": "none", "k": 0, "heads": [], "mode": "uniform", "phase": "decode", "seed": 0}


def trial(length, depth, score, mask, model="TinyLM"):
    return {
        "model": model, "context_length": length, "depth_percent": depth, "version": 1,
        "needle": "The parrot is named Captain Juniper.", "model_response": "Captain Juniper",
        "score": score, "test_duration_seconds": 0.5, "test_timestamp_utc": "2025-01-01T00:00:00Z",
        "mask": mask,
    }


def make_folder(root: Path, name: str, trials: list[dict]) -> Path:
    folder = root / name
    folder.mkdir()
    for i, t in enumerate(trials):
        (folder / f"trial_{i}.json").write_text(json.dumps(t))
    return folder


@pytest.fixture
def folders(tmp_path):
    """A masked folder with a missing cell and a repeated cell, and a full baseline."""
    masked = make_folder(tmp_path, "top10", [
        trial(1000, 0.0, 100.0, TOP10), trial(2000, 0.0, 0.0, TOP10),
        trial(1000, 50.0, 50.0, TOP10), trial(1000, 50.0, 0.0, TOP10),  # cell (50, 1000) -> 25
        # (50, 2000) missing -> NaN
    ])
    (masked / "manifest.json").write_text(json.dumps({"context_length": 1, "depth_percent": 1, "score": 1}))
    (masked / "notes.json").write_text(json.dumps({"something": "else"}))
    base = make_folder(tmp_path, "none", [
        trial(1000, 0.0, 100.0, NONE), trial(2000, 0.0, 100.0, NONE),
        trial(1000, 50.0, 100.0, NONE), trial(2000, 50.0, 60.0, NONE),
    ])
    return masked, base


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_load_results_grid_and_mean(folders):
    masked, base = folders
    g = plot.load_results(masked)
    assert g.depths.tolist() == [0.0, 50.0]
    assert g.lengths.tolist() == [1000, 2000]
    assert g.scores[0].tolist() == [100.0, 0.0]
    assert g.scores[1, 0] == 25.0 and math.isnan(g.scores[1, 1])
    assert g.mean == 37.5 and g.n_trials == 4  # (100 + 0 + 50 + 0) / 4; manifest and notes ignored
    assert g.model == "TinyLM"
    assert g.mask == "top-10 heads masked (uniform, decode)" and not g.baseline
    assert g.title() == "TinyLM, single needle: ROUGE-1 recall x100, top-10 heads masked (uniform, decode); mean 37.5"
    b = plot.load_results(base)
    assert b.scores.tolist() == [[100.0, 100.0], [100.0, 60.0]]
    assert b.mean == 90.0 and b.baseline and b.mask == "no heads masked"


def test_heatmap_writes_png(folders):
    masked, _ = folders
    out = plot.heatmap(masked)
    assert out == masked / "heatmap.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert no_temp_files(masked)
    # a PNG left in the folder is not mistaken for a trial, and the grid is unchanged
    assert plot.load_results(masked).n_trials == 4


def test_side_by_side_writes_png(folders, tmp_path):
    masked, base = folders
    out_dir = tmp_path / "graph"
    out = plot.side_by_side([base, masked], out_dir / "sbs.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert no_temp_files(out_dir)
    # without a baseline: one row only, still a PNG
    other = make_folder(tmp_path, "random10", [trial(1000, 0.0, 80.0, {**TOP10, "kind": "random"})])
    out2 = plot.side_by_side([masked, other], out_dir / "sbs2.png")
    assert out2.read_bytes()[:8] == PNG_MAGIC


def test_plot_cli(folders, tmp_path, capsys):
    masked, base = folders
    assert plot_cli.cli([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot_cli.cli([str(empty)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    out = tmp_path / "cli.png"
    assert plot_cli.cli([str(base), str(masked), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_average_ranks_and_spearman():
    ranks = stats.average_ranks(torch.tensor([10.0, 20.0, 10.0, 30.0]).numpy())
    assert ranks.tolist() == [1.5, 3.0, 1.5, 4.0]
    assert math.isnan(stats.spearman(torch.ones(4).numpy(), torch.arange(4.0).numpy()))


def test_compare_known_answers():
    a = torch.arange(12.0).reshape(3, 4)
    same = stats.compare(a, a.clone(), k=5)
    assert same["overlap"] == 5 and same["jaccard"] == 1.0 and same["spearman"] == pytest.approx(1.0)
    assert same["shared"] == [(2, 3), (2, 2), (2, 1), (2, 0), (1, 3)]
    rev = stats.compare(a, -a, k=3)
    assert rev["spearman"] == pytest.approx(-1.0)
    assert rev["overlap"] == 0 and rev["jaccard"] == 0.0 and rev["shared"] == []
    r = stats.compare(torch.tensor([[0.9, 0.1], [0.5, 0.0]]), torch.tensor([[0.8, 0.6], [0.2, 0.0]]), k=2)
    assert (r["overlap"], r["jaccard"], r["shared"]) == (1, 0.333, [(0, 0)])
    assert r["spearman"] == pytest.approx(0.8)
    with pytest.raises(plot.UserError, match="3 x 4 grid with a 4 x 3"):
        stats.compare(a, a.reshape(4, 3))


def test_heads_heatmap_png(tmp_path):
    out = head_plots.heads_heatmap(torch.rand(4, 6), tmp_path / "h.png", "tiny")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert no_temp_files(tmp_path)


LONG_TITLE = "SmolLM2-135M-Instruct: retrieval score per head (30 layers x 9 heads; top 5 outlined)"


def title_box(fig, title: str):
    """The laid-out figure's text artist showing ``title`` (wrapped or not) and its pixel box."""
    fig.draw_without_rendering()  # runs the constrained layout: the boxes are final
    flat = " ".join(title.split())
    (text,) = [t for t in fig.findobj(Text) if " ".join(t.get_text().split()) == flat]
    return text.get_window_extent(fig.canvas.get_renderer())


def inside(box, outer) -> bool:
    return outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


@pytest.mark.parametrize("shape", [(30, 9), (4, 2), (80, 64)])
def test_heads_title_fits_the_figure(shape):
    """The CLI's title of a 30 x 9 grid was wider than the 5.7-inch figure, cut off on both sides."""
    fig = head_plots.heads_figure(torch.rand(*shape), LONG_TITLE)
    FigureCanvasAgg(fig)
    assert inside(title_box(fig, LONG_TITLE), fig.bbox)


def test_niah_title_fits_the_figure(tmp_path):
    random10 = {**TOP10, "kind": "random", "seed": 2}
    folder = make_folder(tmp_path, "r10", [trial(1000, 50.0, 80.0, random10, model="Meta-Llama-3.1-8B-Instruct")])
    grid = plot.load_results(folder)  # one cell: the narrowest figure (5 inches)
    title = grid.title()
    assert title == ("Meta-Llama-3.1-8B-Instruct, single needle: ROUGE-1 recall x100, random-10 heads masked "
                     "(uniform, decode, seed 2); mean 80.0")
    fig = plot.heatmap_figure(grid)
    FigureCanvasAgg(fig)
    assert inside(title_box(fig, title), fig.bbox)


def test_heads_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the heatmap goes to the current folder, not beside the input
    f = tmp_path / "tiny.json"
    grid = {"0-0": [0.1, 0.3], "0-1": [0.0, 0.0], "1-0": [1.0, 0.8], "1-1": [0.5, 0.5]}
    f.write_text(json.dumps(grid) + "\n")
    assert heads.main(["top", str(f), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["1", "1-0", "0.900"]
    assert lines[2].split() == ["2", "1-1", "0.500"]
    assert heads.main(["heatmap", str(f)]) == 0
    assert capsys.readouterr().out.strip() == "tiny.heads.png"
    assert (tmp_path / "tiny.heads.png").read_bytes()[:8] == PNG_MAGIC
    assert heads.main(["compare", str(f), str(f), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "top-2 overlap: 2 / 2" in out and "shared heads:   1-0 1-1" in out
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({f"0-{h}": [0.1] for h in range(3)}) + "\n")
    assert heads.main(["compare", str(f), str(wide)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert heads.main(["top", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_published_llama_scores():
    path = REFERENCE / "llama-2-7b-80k.json"
    if not path.is_file():
        pytest.skip(f"reference head scores not present at {REFERENCE}")
    from retrieval_head.headfiles.load import load_head_scores

    scores = load_head_scores(path)
    assert tuple(scores.shape) == (32, 32)
    from retrieval_head.headfiles.ranking import top_heads

    layer, head, mean = top_heads(scores, 1)[0]
    assert (layer, head) == (16, 19)
    assert mean == pytest.approx(0.94, abs=0.005)
