"""One source of options: each command's parser is generated from its settings dataclasses,
so the API's defaults are the command line's; the console command takes exactly the
scripts' options; the resume fingerprint holds exactly the settings that change a result."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval_head.cli import detect as cli_detect
from retrieval_head.cli import judge
from retrieval_head.cli import commands as cli
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
    options = [a for a in mod.parser()._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == fields
    assert all("(default: " in a.help for a in options)


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
