"""``--press NAME --budget F...`` on the command line: the needle test writes a folder per
budget whose records carry the press, its parameters, the budget and the bytes its keep sets
hold; ``generate`` answers on the press's real cache as its simulation does alone and prints
the bytes that cache holds."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import save_tiny_llama

from retrieval_head.cli import commands
from retrieval_head.core.intervene import PressMask, intervene
from retrieval_head.core.kvcache import GrowingCache
from retrieval_head.inputs.prompt import user_prompt
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.snapkv import SnapKV

TEXT = "The archive opens at nine. The password of the archive room is Amber Falcon. Visitors sign in first. " * 3
GRID = ["--context_lengths", "300", "--depth_percents", "20", "80", "--quiet", "--no_plot"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("press") / "tiny", default_tokenizer)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hs") / "tiny.json"
    path.write_text(json.dumps({f"{l}-{h}": [float(l * 4 + h) / 8] for l in range(2) for h in range(4)}))
    return path


def records(folder):
    return sorted((json.loads(p.read_text()) for p in folder.glob("tiny_len_*.json")),
                  key=lambda r: r["depth_percent"])


def test_mask_writes_a_folder_per_budget_with_the_bytes_held(tiny, head_file, tmp_path, capsys):
    out = tmp_path / "out"
    for press, extra in (("knorm", []), ("headkv", ["--head_score", str(head_file), "--press_args", "window=8"])):
        code = commands.main(["mask", "--model_path", str(tiny), *GRID, "--output_dir", str(out), "--press", press,
                              "--budget", "0.5", "0.25", *extra, "--resume"])
        assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["tiny", "tiny_press_headkv_b0.25", "tiny_press_headkv_b0.5",
                                                    "tiny_press_knorm_b0.25", "tiny_press_knorm_b0.5"]
    full = 300 * 2 * 2 * 2 * 8 * 4  # tokens x layers x KV heads x (K, V) x head_dim x float32
    for press, budget in (("knorm", 0.5), ("knorm", 0.25), ("headkv", 0.25)):
        recs = records(out / f"tiny_press_{press}_b{budget:g}")
        assert len(recs) == 2
        for r in recs:
            m = r["mask"]
            assert (m["kind"], m["press"], m["budget"], m["phase"], m["kv_bytes_full"]) == \
                ("press", press, budget, "decode", full)
            assert m["kv_bytes"] / full == m["kv_kept"]
            if press == "knorm":  # the budget on every layer, exactly
                assert m["kv_kept"] == budget
            else:  # layer shares rounded each to whole keys
                assert m["kv_kept"] == pytest.approx(budget, abs=0.01)
    assert records(out / "tiny_press_headkv_b0.5")[0]["mask"]["params"] == \
        {"scores": "tensor [2, 2]", "beta": 1.2, "temp": 1.0, "window": 8, "kernel": 5}
    assert "mask" not in records(out / "tiny")[0] or records(out / "tiny")[0]["mask"]["kind"] == "none"


TIMES = ("test_duration_seconds", "test_timestamp_utc")


@pytest.mark.parametrize("press, budget", [("knorm", "0.5"), ("headkv", "0.25")])
def test_mask_cache_real_runs_the_press_on_the_pressed_cache(tiny, head_file, tmp_path, capsys, press, budget):
    """``needle_in_haystack_with_mask.py ... --cache real`` (its entry point, in process): the
    same records as the simulation (``--cache masked``) but for the times, the record saying
    ``cache: real`` with the bytes the pressed cache held once compressed, those the keep sets
    predict (the simulation's ``kv_bytes``): the tiny model's two KV heads are each a length
    group of their own (``keep.pressed_bytes``), so no padding, whether the press keeps every
    head the same count (knorm: exactly half) or each its own (headkv's shares: not exactly a
    quarter). tests/test_realrows.py checks the padded bytes of larger groups."""
    extra = ["--head_score", str(head_file), "--press_args", "window=8"] if press == "headkv" else []
    got = {}
    for cache in ("real", "masked"):
        out = tmp_path / cache
        argv = ["--model_path", str(tiny), *GRID, "--output_dir", str(out), "--press", press, "--budget", budget,
                *extra, "--cache", cache]
        assert commands.run_command("mask", argv, "needle_in_haystack_with_mask.py") == 0, capsys.readouterr().err
        got[cache] = records(out / f"tiny_press_{press}_b{budget}")
    assert len(got["real"]) == len(got["masked"]) == 2
    for real, masked in zip(got["real"], got["masked"]):
        r, m = real.pop("mask"), masked.pop("mask")
        assert {k: v for k, v in real.items() if k not in TIMES} == {k: v for k, v in masked.items() if k not in TIMES}
        assert r.pop("cache") == "real" and "cache" not in m  # not the simulation run again
        assert r == m and r["kv_bytes"] / r["kv_bytes_full"] == r["kv_kept"] < 1
        assert r["kv_kept"] == 0.5 if press == "knorm" else r["kv_kept"] != 0.25


def test_mask_phase_context_keeps_the_question_whole(tiny, tmp_path, capsys, default_tokenizer):
    from transformers import AutoConfig

    from retrieval_head.experiments.settings import NiahSettings
    from retrieval_head.experiments.sweep import plan

    out = tmp_path / "out"
    assert commands.main(["mask", "--model_path", str(tiny), *GRID, "--output_dir", str(out), "--press", "knorm",
                          "--budget", "0.25", "--phase", "context"]) == 0, capsys.readouterr().err
    st = NiahSettings(context_lengths=(300,), depth_percents=(20, 80))
    cells = plan(default_tokenizer, ModelShape.from_config(AutoConfig.from_pretrained(tiny)), st, [st.the_needle()])
    for key, r in zip(cells.keys(), records(out / "tiny_press_knorm_b0.25_context")):
        context = cells.prompt(key).context_end  # its keys a quarter kept, the question's every one
        m = r["mask"]
        assert (r["depth_percent"], m["phase"]) == (key.depth_percent, "context") and 200 < context < 290
        assert m["kv_bytes"] == 2 * round(0.25 * 2 * context) * 2 * 8 * 4 + (300 - context) * 256


def test_generate_answers_as_the_press_alone_and_prints_the_bytes(tiny, tmp_path, capsys, default_tokenizer):
    from transformers import AutoModelForCausalLM

    prompt = tmp_path / "p.txt"
    prompt.write_text(TEXT)
    code = commands.main(["generate", str(prompt), "--model_path", str(tiny), "--max_new_tokens", "10",
                          "--press", "snapkv", "--budget", "0.25", "--press_args", "window=8"])
    out = capsys.readouterr().out
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids = user_prompt(default_tokenizer, TEXT, None, chat=True)[0]
    x = torch.tensor([ids])
    with intervene(model, hooks=[PressMask(SnapKV(window=8), 0.25).hook(ModelShape.of(model), len(ids))]):
        want = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                              cache=GrowingCache(), pad_token_id=default_tokenizer.eos_token_id)
    assert out.startswith(default_tokenizer.decode(want[0, len(ids):], skip_special_tokens=True))
    memory = out.splitlines()[-1]
    length = len(ids) + 9  # the last answer token is never cached
    kept = 2 * round(0.25 * 2 * len(ids))  # keys kept, per layer: a quarter of the prompt's over its KV heads
    held = (kept + 9 * 2 * 2) * 2 * 8 * 4
    assert memory.startswith(f"memory: KV cache {held / 2**20:.2f} MiB held of {length * 256 / 2**20:.2f} MiB full "
                             f"({held / (length * 256):.1%}) at {length} tokens"), memory
