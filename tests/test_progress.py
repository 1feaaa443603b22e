"""A run says what it does before its first trial, then shows a bar over its trials that
opens only once one has finished (so its rate and ETA never count the load): on a tiny
random model, the phase lines in order on stderr, the bar's unit named, never a 0/N bar."""

import json
import re

import pytest
from helpers import save_tiny_llama

from retrieval_head.cli import detect as cli_detect
from retrieval_head.cli import mask as cli_niah
from retrieval_head.engine.progress import Progress, count


def at_zero(err: str, total: int) -> bool:
    """Whether the bar was drawn at 0 of ``total`` (``10/12`` is no zero: a count of its own)."""
    return re.search(rf"(?<![0-9])0/{total}(?![0-9])", err) is not None


def test_the_bar_opens_at_the_first_finished_trial(capsys):
    seen = []
    with Progress(5, "detect", status=seen.append) as p:
        p.say("prefilling prompt 1 of 5 (300 tokens)")
        assert p.bar is None  # nothing finished yet: no bar, so no clock running
        p.update(2)  # a first batch of two rows
        assert (p.bar.n, p.bar.initial, p.bar.total, p.bar.unit) == (2, 2, 5, "trial")
        p.say("prefilling prompt 3 of 5 (300 tokens)")  # the bar tells the rest
        p.update(3)
        assert p.bar.n == 5
    assert seen == ["prefilling prompt 1 of 5 (300 tokens)"]
    err = capsys.readouterr().err
    assert "2/5" in err and "5/5" in err and not at_zero(err, 5) and "trial/s" in err


def test_a_quiet_progress_draws_nothing(capsys):
    with Progress(3, "detect", enabled=False) as p:
        p.say("loading")  # no status: logged, not printed
        p.update(3)
    assert p.bar is None and p.done == 3
    assert capsys.readouterr().err == ""


def test_counts_say_one_or_many():
    assert [count(1, "row"), count(2, "row"), count(0, "seed")] == ["1 row", "2 rows", "0 seeds"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("progress") / "tiny", default_tokenizer)


def phases(err: str) -> list[str]:
    """The lines before the bar's first line (tqdm redraws with \\r)."""
    lines = err.replace("\r", "\n").splitlines()
    first_bar = next(i for i, line in enumerate(lines) if "%|" in line)
    return [line for line in lines[:first_bar] if line]


GRID = ["--context_lengths", "300", "600", "--depth_percents", "0", "50", "100", "--max_new_tokens", "2",
        "--batch_tokens", "1200"]  # 1200 tokens: two 300-token or one 600-token prompt per decode batch


def test_detect_says_each_phase_then_counts_trials(tiny, tmp_path, capsys):
    argv = ["--model_path", str(tiny), *GRID, "--rouge_threshold", "-1", "--output_dir", str(tmp_path / "a")]
    assert cli_detect.cli(argv) == 0
    err = capsys.readouterr().err
    said = phases(err)
    assert said[:2] == ["loading the model's weights (2 layers) ...", "18 trials to run"]
    assert said[2:] == ["prefilling prompt 1 of 18 (300 tokens)", "prefilling prompt 2 of 18 (600 tokens)",
                        "prefilling prompt 3 of 18 (300 tokens)", "prefilling prompt 4 of 18 (600 tokens)",
                        "decoding 2 rows together (up to 2 new tokens each)"]
    assert "detect:" in err and "trial/s" in err and "18/18" in err
    assert not at_zero(err, 18)  # the bar never sat at zero: it opened at the first finished trial
    # --quiet: no phase lines, no bar
    assert cli_detect.cli(argv[:-1] + [str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_mask_says_its_cells_and_conditions_then_counts_trials(tiny, tmp_path, capsys):
    scores = tmp_path / "tiny.json"
    scores.write_text(json.dumps({f"{layer}-{h}": [0.1 * h] for layer in range(2) for h in range(4)}) + "\n")
    argv = ["--model_path", str(tiny), *GRID, "--mask_top", "0", "-2", "--head_score", str(scores),
            "--output_dir", str(tmp_path / "a"), "--no_plot"]
    assert cli_niah.cli(argv) == 0
    err = capsys.readouterr().err
    said = phases(err)
    assert said[:2] == ["loading the model's weights (2 layers) ...", "6 cells x 2 conditions = 12 trials"]
    assert said[2:] == ["prefilling prompt 1 of 6 (300 tokens)", "prefilling prompt 2 of 6 (600 tokens)",
                        "decoding 2 rows together (up to 2 new tokens each)"]  # one 600-token prompt, 2 masks
    assert "niah:" in err and "trial/s" in err and "12/12" in err and not at_zero(err, 12)
    assert cli_niah.cli(argv[:-2] + [str(tmp_path / "b"), "--no_plot", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_mistake_is_still_one_line_without_quiet(tiny, tmp_path, capsys):
    """Phase lines start at the weights' load, after every input is checked."""
    argv = ["--model_path", str(tiny), *GRID, "--mask_top", "2", "--head_score", str(tmp_path / "none.json"),
            "--output_dir", str(tmp_path / "a")]
    assert cli_niah.cli(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: head_score file") and "does not exist" in err[0]
