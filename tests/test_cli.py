"""One source of options: each command's parser is generated from its settings dataclasses,
so the API's defaults are the command line's; the console command takes exactly the
scripts' options; the resume fingerprint holds exactly the settings that change a result."""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval_head.cli import commands as cli
from retrieval_head.cli import detect as cli_detect
from retrieval_head.cli import judge
from retrieval_head.cli import mask as cli_niah
from retrieval_head.experiments.detect import DetectSettings
from retrieval_head.experiments.mask import NiahSettings
from retrieval_head.models.loading import ModelSpec
from retrieval_head.options import fingerprint, from_args

COMMANDS = {"detect": cli_detect, "mask": cli_niah, "judge": judge}


@pytest.mark.parametrize("command", COMMANDS)
def test_no_arguments_give_the_dataclass_defaults(command):
    mod = COMMANDS[command]
    args = mod.parser().parse_args([])
    for cls, _ in mod.GROUPS:
        assert from_args(cls, args) == cls()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_option_with_its_default(command, capsys):
    mod = COMMANDS[command]
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text == mod.parser(f"retrieval-head {command}").format_help()  # the script's parser, named as typed
    assert text.startswith(f"usage: retrieval-head {command} ")
    fields = {f.name for cls, _ in mod.GROUPS for f in dataclasses.fields(cls)}
    options = [a for a in mod.parser()._actions if a.option_strings and a.dest != "help"
               and a.help != argparse.SUPPRESS]  # old spellings parse, hidden (test_vocabulary.py)
    assert {a.dest for a in options} == fields
    assert all("(default: " in a.help for a in options)


@pytest.mark.full  # spawns the installed console command (~60 s): `make test` only
def test_the_installed_console_command_runs_the_scripts():
    exe = Path(sys.executable).with_name("retrieval-head")
    if not exe.exists():
        pytest.skip("the package is not installed (make install)")
    for command, script in (("detect", "retrieval_head_detection.py"), ("mask", "needle_in_haystack_with_mask.py")):
        a = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, timeout=120)
        b = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[1])
        assert a.returncode == b.returncode == 0
        assert a.stdout.split("options:", 1)[1] == b.stdout.split("options:", 1)[1]  # prog names differ
    bad = subprocess.run([str(exe), "train"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr


def test_the_fingerprint_holds_what_changes_a_result():
    base = fingerprint(DetectSettings())
    assert set(base) == {"haystack_dir", "chat_template", "max_new_tokens", "prefill_chunk", "score",
                         "rouge_threshold"}
    # the speed levers, the grid and the output options change no trial's record
    assert fingerprint(DetectSettings(prefix_reuse=False, batch_tokens=0, context_lengths=(5,), save_prompts=True)) \
        == base
    assert fingerprint(DetectSettings(max_new_tokens=7)) != base
    assert set(fingerprint(NiahSettings())) == {"haystack_dir", "chat_template", "max_new_tokens", "prefill_chunk"}


def test_model_spec_options_parse_back():
    args = cli_detect.parser().parse_args(["--model_path", "m", "--dtype", "bfloat16", "--trust_remote_code"])
    assert from_args(ModelSpec, args) == ModelSpec(model_path="m", dtype="bfloat16", trust_remote_code=True)


ROOT = Path(__file__).resolve().parents[1]


def _run(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.full  # one subprocess per entry point (~170 s): `make test` only
def test_usage_lines_name_the_command_the_user_typed():
    """``python -m retrieval_head`` is the console command; each entry point passes its own name
    down to the subcommand's usage line."""
    top = _run("-m", "retrieval_head")
    assert top.returncode == 2 and top.stdout.startswith("usage: python -m retrieval_head {detect,mask,plot,")
    for argv, usage in ((["-m", "retrieval_head", "heads", "top", "--help"], "python -m retrieval_head heads top"),
                        (["-m", "retrieval_head.heads", "top", "--help"], "python -m retrieval_head.heads top"),
                        (["-m", "retrieval_head.plot", "--help"], "python -m retrieval_head.plot"),
                        (["-m", "retrieval_head.compress", "--help"], "python -m retrieval_head.compress"),
                        (["-m", "retrieval_head.judge", "--help"], "python -m retrieval_head.judge"),
                        (["retrieval_head_detection.py", "--help"], "retrieval_head_detection.py"),
                        (["needle_in_haystack_with_mask.py", "--help"], "needle_in_haystack_with_mask.py")):
        r = _run(*argv)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: {usage} "), (argv, r.stdout[:200], r.stderr)
    bad = _run("-m", "retrieval_head", "heads", "top", "x.json", "--top", "many")
    assert bad.returncode == 2 and bad.stderr == ("error: argument --top: invalid int value: 'many'; see python -m "
                                                  "retrieval_head heads top --help\n")


def test_the_console_command_names_each_subcommand(capsys):
    for argv, usage in ((["heads", "top", "--help"], "retrieval-head heads top"),
                        (["heads", "export", "--help"], "retrieval-head heads export"),
                        (["plot", "--help"], "retrieval-head plot"),
                        (["compress", "--help"], "retrieval-head compress")):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {usage} "), argv


@pytest.fixture
def head_file(tmp_path):
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps({"0-0": [0.1, 0.3], "0-1": [0.0, 0.0], "1-0": [1.0, 0.8], "1-1": [0.5, 0.5]}) + "\n")
    return f


@pytest.mark.parametrize("command", ["plot", "compress", "heads", "detect", "judge"])
def test_every_command_has_the_same_error_boundary(command, head_file, tmp_path, capsys, monkeypatch):
    """Ctrl-C: one line, exit 130; a full disk: one line, exit 28; never a traceback."""
    import errno

    from retrieval_head.cli import compress as cli_compress
    from retrieval_head.cli import heads
    from retrieval_head.cli import plot as cli_plot

    argv = {"plot": [str(tmp_path)], "compress": [str(tmp_path)], "heads": ["top", str(head_file)],
            "detect": ["--model_path", str(tmp_path / "none")], "judge": ["--head_score", str(head_file)]}[command]
    target = {"plot": (cli_plot, "heatmap"), "compress": (cli_compress, "curves"),
              "heads": (heads, "format_rows"),
              "detect": (cli_detect, "open_checked"), "judge": (judge, "open_checked")}[command]
    for exc, code, phrase in ((KeyboardInterrupt(), 130, "interrupted"),
                              (OSError(errno.ENOSPC, "No space left on device", "x.png"), 28, "no space left")):
        def boom(*a, exc=exc, **k):
            raise exc
        monkeypatch.setattr(*target, boom)
        assert cli.main([command, *argv]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], err
        assert ("--resume" in err[0]) == (command == "detect")  # only detect and mask resume


def test_old_flag_spellings_still_work(head_file, tmp_path, capsys):
    """--top is the K highest-scoring heads in every heads subcommand (-k, its old name, is
    hidden); convergence's --orders was --seeds (a count, where --seeds elsewhere lists seeds)."""
    from retrieval_head.cli import heads

    outs = []
    for argv in (["top", str(head_file), "--top", "2"], ["top", str(head_file), "-k", "2"],
                 ["compare", str(head_file), str(head_file), "--top", "1"],
                 ["compare", str(head_file), str(head_file), "-k", "1"]):
        assert heads.main(argv) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].splitlines()[2].split() == ["2", "1-1", "0.500"]
    assert outs[2] == outs[3] and "top-1 overlap: 1 / 1" in outs[2]
    pngs = [tmp_path / "a.png", tmp_path / "b.png"]
    assert heads.main(["convergence", str(head_file), "--top", "1", "--orders", "3", "--out", str(pngs[0])]) == 0
    assert heads.main(["convergence", str(head_file), "--top", "1", "--seeds", "3", "--out", str(pngs[1])]) == 0
    assert pngs[0].read_bytes() == pngs[1].read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        heads.main(["top", "--help"])
    text = capsys.readouterr().out
    assert "--top K" in text and "-k" not in text


def test_detect_seed_seeds_the_adaptive_bootstrap(monkeypatch):
    """--seed reaches the --until_stable bootstrap (its default 0 is the sweep's former fixed seed)."""
    from types import SimpleNamespace

    from retrieval_head.experiments import adaptive

    args = cli_detect.parser().parse_args(["--until_stable", "1", "--seed", "7"])
    settings = from_args(DetectSettings, args)
    assert settings.seed == 7 and DetectSettings().seed == adaptive.SEED == 0
    seen = []
    real = adaptive.bootstrap
    monkeypatch.setattr(adaptive, "bootstrap", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    trials = SimpleNamespace(needles=[SimpleNamespace(needle_id=0)], lengths=[100, 200], depths=[0, 50])
    run_round = lambda keys: [dict(needle_id=k.needle_id, context_length=k.context_length,  # noqa: E731
                                   depth_percent=k.depth_percent, passed=True, head_scores=[[1.0, 0.0]]) for k in keys]
    _, stopping = adaptive.sweep(trials, settings, run_round)
    assert seen and set(seen) == {7} and stopping["seed"] == 7 and "seed 7" in stopping["rule"]
