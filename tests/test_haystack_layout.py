"""The original repository's data, as it lays it out: ``haystack_for_detect/`` (a needles.jsonl
beside part1, part2, part3; needle i reads part{i+1}) and ``PaulGrahamEssays/`` (a plain
folder of .txt files), rebuilt here from the installed essays with needles written in the
original's format (its field order, a real_needle that differs in case from the needle)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import save_tiny_llama
from transformers import AutoConfig

from retrieval_head.cli import detect as cli_detect
from retrieval_head.experiments.detect import DetectSettings
from retrieval_head.experiments.mask import NiahSettings
from retrieval_head.experiments.sweep import plan
from retrieval_head.inputs.haystack import default_haystack_dir, original_layout
from retrieval_head.models.embedded import default_model_dir
from retrieval_head.models.shape import ModelShape

NEEDLES = [  # the original's needles.jsonl, key order and quirks kept, the sentences ours
    {"needle": "A new survey of the Orrin valley shows that its rivers run colder every spring.",
     "question": "What does a new survey of the Orrin valley show ?",
     "real_needle": "its rivers run colder every spring."},
    {"needle": "The best thing to do in Tallmark is to climb the clock tower and eat plum cake at noon.",
     "question": "What is the best thing to do in Tallmark ?",
     "real_needle": "climb the clock tower and eat plum cake at noon"},
    {"question": "Why does everyone admire Mrs Quill ?",
     "needle": "Mrs Quill is admired by everyone because she mends every broken kite in the village for free.",
     "real_needle": "Because she mends every broken kite in the village for free."},
]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict:
    """``Retrieval_Head/``: haystack_for_detect/ (one essay per part) and PaulGrahamEssays/."""
    root = tmp_path_factory.mktemp("Retrieval_Head")
    essays = sorted(default_haystack_dir().glob("*.txt"))
    layout = root / "haystack_for_detect"
    for i, essay in enumerate(essays[:3]):
        (layout / f"part{i + 1}").mkdir(parents=True)
        shutil.copy2(essay, layout / f"part{i + 1}" / "p1.txt")
    (layout / "needles.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NEEDLES))
    plain = root / "PaulGrahamEssays"
    plain.mkdir()
    for essay in essays[3:6]:
        shutil.copy2(essay, plain / essay.name)
    return {"layout": layout, "plain": plain, "parts": [e.read_text(encoding="utf-8") for e in essays[:3]]}


@pytest.fixture(scope="module")
def shape():
    return ModelShape.from_config(AutoConfig.from_pretrained(default_model_dir()))


def test_each_needle_reads_its_own_part(original, default_tokenizer, shape):
    layout = original["layout"]
    assert original_layout(layout) == layout and original_layout(original["plain"]) is None
    checked = plan(default_tokenizer, shape, DetectSettings(haystack_dir=str(layout), context_lengths=(300,),
                                                            depth_percents=(0, 100)))
    assert [(n.needle, n.question) for n in checked.needles] == [(n["needle"], n["question"]) for n in NEEDLES]
    assert checked.pairing() == {"layout": "original", "needles": [
        {"needle_id": i, "haystack": str(layout / f"part{i + 1}")} for i in range(3)]}
    for key in checked.keys():
        text = default_tokenizer.decode(checked.prompt(key).ids)
        heads = [part.strip()[:60] for part in original["parts"]]  # each part's opening words
        assert [h in text for h in heads] == [i == key.needle_id for i in range(3)], key
        assert NEEDLES[key.needle_id]["needle"] in text


def test_the_mask_script_pairs_its_needle_too(original):
    layout = original["layout"]
    n = NiahSettings(haystack_dir=str(layout), needle_id=2).the_needle()
    assert (n.needle, n.haystack) == (NEEDLES[2]["needle"], layout / "part3")
    given = NiahSettings(haystack_dir=str(layout), needle="The code is 7.", question="What is the code?",
                         real_needle="7").the_needle()
    assert given.haystack == layout / "part1"  # a needle given as text is needle 0


def test_paul_graham_essays_folder_is_a_plain_haystack(original, default_tokenizer, shape):
    checked = plan(default_tokenizer, shape, DetectSettings(haystack_dir=str(original["plain"]),
                                                            context_lengths=(300,), depth_percents=(50,)))
    assert len(checked.needles) == 3 and checked.needles[0].needle != NEEDLES[0]["needle"]  # the package's needles
    assert checked.pairing() == {"layout": "folder", "needles": [
        {"needle_id": i, "haystack": str(original["plain"])} for i in range(3)]}


def test_detection_records_the_pairing(original, default_tokenizer, tmp_path):
    """The command line on the layout (a tiny random model; every trial counts): the layout's
    needles are the ones run, and the manifest says which part each read."""
    model = save_tiny_llama(tmp_path / "tiny", default_tokenizer)
    out = tmp_path / "head_score"
    code = cli_detect.cli(["--model_path", str(model), "--haystack_dir", str(original["layout"]), "--context_lengths",
                           "300", "--depth_percents", "50", "--max_new_tokens", "4", "--rouge_threshold", "-1",
                           "--output_dir", str(out), "--quiet"])
    assert code == 0
    manifest = json.loads((out / "tiny.manifest.json").read_text())
    assert manifest["haystacks"] == {"layout": "original", "needles": [
        {"needle_id": i, "haystack": str(original["layout"] / f"part{i + 1}")} for i in range(3)]}
    assert [n["needle"] for n in manifest["fingerprint"]["needles"]] == [n["needle"] for n in NEEDLES]
    assert len((out / "tiny.trials.jsonl").read_text().splitlines()) == 3
