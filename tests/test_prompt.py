"""Token-space prompts: exact lengths, exact needle spans, sentence boundaries, no stray specials."""

import numpy as np
import pytest

from retrieval_head.errors import UserError
from retrieval_head.inputs.haystack import Needle, default_haystack_dir, load_needles, read_haystack
from retrieval_head.inputs.prompt import PromptBuilder


@pytest.fixture(scope="module")
def builder(default_tokenizer):
    return PromptBuilder(default_tokenizer, read_haystack(default_haystack_dir()), chat_template=True)


@pytest.mark.parametrize("length", [200, 513, 1000])
@pytest.mark.parametrize("depth", [0, 11, 50, 89, 100])
def test_exact_length_span_and_splice(builder, default_tokenizer, length, depth):
    for needle in load_needles():
        p = builder.build(needle, length, depth)
        assert len(p.ids) == length
        s, e = p.needle_span
        assert default_tokenizer.decode(p.ids[s:e]).strip().lower() == needle.real_needle.lower()
        before, after = builder.template(needle.question)
        nids, _ = builder.needle_tokens(needle)
        hay = builder.haystack[: p.haystack_tokens].tolist()
        assert p.ids == before + hay[: p.insert_at] + nids + hay[p.insert_at:] + after


@pytest.mark.parametrize("depth", [11, 33, 50, 78, 100])
def test_needle_sits_at_last_sentence_end_before_depth(builder, default_tokenizer, depth):
    needle = load_needles()[0]
    p = builder.build(needle, 800, depth)
    n = p.haystack_tokens
    at = p.insert_at
    assert at <= int(n * depth / 100)
    hay = builder.haystack.tolist()
    assert default_tokenizer.decode([hay[at - 1]]).endswith((".", "!", "?"))
    assert default_tokenizer.decode([hay[at]])[:1].isspace()
    # no later sentence end fits before the depth
    later = np.flatnonzero(builder._sentence_end[at: int(n * depth / 100)])
    assert len(later) == 0


def test_depth_zero_is_the_start(builder):
    assert builder.build(load_needles()[0], 600, 0).insert_at == 0


def test_decimal_point_is_no_sentence_end(default_tokenizer):
    b = PromptBuilder(default_tokenizer, "Version 3.5 is out. It works! Really? Yes.", chat_template=False)
    ends = [default_tokenizer.decode([int(t)]) for t, e in zip(b.haystack, b._sentence_end) if e]
    assert [x.strip() for x in ends] == [".", "!", "?", "."]


def test_no_stray_special_tokens(builder, default_tokenizer):
    special = set(default_tokenizer.all_special_ids)
    needle = load_needles()[1]
    before, after = builder.template(needle.question)
    p = builder.build(needle, 700, 50)
    count = lambda ids: sum(i in special for i in ids)  # noqa: E731
    assert count(p.ids) == count(before) + count(after)


def test_plain_template_wording(default_tokenizer):
    b = PromptBuilder(default_tokenizer, "One. Two. Three. " * 200, chat_template=False)
    n = Needle(0, "The code word is heron.", "What is the code word?", "heron")
    text = default_tokenizer.decode(b.build(n, 150, 50).ids)
    assert text.startswith("<book>") and text.endswith(
        "</book>\nBased on the content of the book, Question: What is the code word?\nAnswer:")


def test_lengths_out_of_range_are_refused(builder):
    needle = load_needles()[0]
    with pytest.raises(UserError, match="overhead"):
        builder.build(needle, 20, 50)
    with pytest.raises(UserError, match=f"haystack has {len(builder.haystack)} tokens"):
        builder.build(needle, len(builder.haystack) + 500, 50)


def test_answer_located_case_insensitively(default_tokenizer):
    b = PromptBuilder(default_tokenizer, "One. Two. Three. " * 100, chat_template=False)
    n = Needle(0, "Mr Green is disliked because he is mean.", "Why?", "Because he is mean.")
    p = b.build(n, 120, 50)
    s, e = p.needle_span
    assert default_tokenizer.decode(p.ids[s:e]).strip() == "because he is mean."
