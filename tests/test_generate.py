"""``retrieval-head generate`` behaves like the tools researchers know: the prompt through the
chat template, and with every head full exactly transformers' own greedy ``generate``; the
answer as it is generated, then the memory line. On the embedded model it answers a plain
question about a text, with every KV head full and with a quarter of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import save_tiny_llama

from retrieval_head.cli import commands
from retrieval_head.inputs.prompt import user_prompt

TEXT = "The archive opens at nine. The password of the archive room is Amber Falcon. Visitors sign in first."
QUESTION = "What is the password of the archive room?"


def test_the_prompt_is_the_chat_templates_user_message(default_tokenizer):
    tok = default_tokenizer
    ids, context = user_prompt(tok, TEXT, None, chat=True)
    assert ids == list(tok.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
    assert context == len(ids)
    both, context = user_prompt(tok, TEXT, QUESTION, chat=True)  # the question on a line of its own
    assert both == list(tok.apply_chat_template([{"role": "user", "content": f"{TEXT}\n{QUESTION}"}],
                                                add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"])
    assert tok.decode(both[context:]).startswith(f"\n{QUESTION}")
    plain, _ = user_prompt(tok, TEXT, None, chat=False)
    assert plain == tok(TEXT)["input_ids"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_tokenizer):
    return save_tiny_llama(tmp_path_factory.mktemp("gen") / "tiny", default_tokenizer)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = commands.main(["generate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_head_full_is_transformers_greedy_generate(tiny, tmp_path, capsys, default_tokenizer):
    from transformers import AutoModelForCausalLM

    prompt = tmp_path / "p.txt"
    prompt.write_text(TEXT)
    code, out, _ = run([str(prompt), "--model_path", str(tiny), "--max_new_tokens", "12"], capsys)
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids = torch.tensor([user_prompt(default_tokenizer, TEXT, None, chat=True)[0]])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          pad_token_id=default_tokenizer.eos_token_id)
    assert out.startswith(default_tokenizer.decode(want[0, ids.shape[1]:], skip_special_tokens=True))
    assert out.splitlines()[-1].startswith("memory: KV cache") and "(100.0%)" in out.splitlines()[-1]


def test_prompt_from_stdin_and_several_keep_values(tiny, tmp_path, capsys, monkeypatch):
    import io
    import json

    hs = tmp_path / "tiny.json"
    hs.write_text(json.dumps({f"{l}-{h}": [float(l * 4 + h)] for l in range(2) for h in range(4)}))
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT))
    code, out, _ = run(["-", "--model_path", str(tiny), "--max_new_tokens", "3", "--head_score", str(hs),
                        "--keep_full", "0", "8"], capsys)
    lines = out.splitlines()
    assert code == 0
    assert [l for l in lines if l.startswith("==")] == ["== top 0 of 8 query heads full ==",
                                                         "== top 8 of 8 query heads full =="]
    memory = [l for l in lines if l.startswith("memory:")]
    assert len(memory) == 2 and "0/4 KV heads full" in memory[0] and "4/4 KV heads full" in memory[1]


def plain_text_with_a_fact() -> str:
    """~900 words of the default haystack, a fact in the middle, a question at the end (1,181
    tokens through the chat template)."""
    from retrieval_head.inputs.haystack import default_haystack_dir

    essays = sorted(default_haystack_dir().glob("*.txt"))
    body = " ".join(essays[1].read_text(encoding="utf-8").split()[:900])
    cut = body.rfind(". ", 0, len(body) // 2) + 2
    fact = "The best thing to do in the town of Vellmoor is to ride the old red tram up to the glass observatory. "
    return f"{body[:cut]}{fact}{body[cut:]}\n\nWhat is the best thing to do in the town of Vellmoor?"


@pytest.mark.slow
def test_the_embedded_model_answers_a_plain_question(tmp_path, capsys):
    """Every KV head full, and a quarter of the KV heads full by the shipped head file (phase
    decode, sink 4 + recent 64: 30 % of the cache's bytes)."""
    head_file = Path(__file__).resolve().parents[1] / "head_score" / "SmolLM2-135M-Instruct.kv_max.json"
    prompt = tmp_path / "p.txt"
    prompt.write_text(plain_text_with_a_fact())
    for extra in ([], ["--head_score", str(head_file), "--keep_fraction", "0.25"]):
        code, out, _ = run([str(prompt), "--max_new_tokens", "32", *extra], capsys)
        assert code == 0 and "red tram" in out and "glass observatory" in out, (extra, out)
        memory = out.splitlines()[-1]
        assert ("90/90 KV heads full" if not extra else "22/90 KV heads full") in memory, memory
