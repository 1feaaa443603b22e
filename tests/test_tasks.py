"""RULER-style tasks: every needle and distractor at an exact token span, none overlapping,
the asked depth respected, seeded bytes, every value once, and the string-match score."""

import pytest

from retrieval_head.errors import UserError
from retrieval_head.inputs.haystack import default_haystack_dir, read_haystack
from retrieval_head.inputs.prompt import PromptBuilder
from retrieval_head.inputs.tasks import TASKS, build_task_prompt, check_tasks, make_trial, string_match

GENERATED = [t for t in TASKS if t != "single"]


@pytest.fixture(scope="module")
def builder(default_tokenizer):
    return PromptBuilder(default_tokenizer, read_haystack(default_haystack_dir()), chat_template=True)


@pytest.mark.parametrize("task", GENERATED)
@pytest.mark.parametrize("length", [300, 700, 1000])
@pytest.mark.parametrize("depth", [0, 50, 100])
def test_spans_exact_disjoint_and_at_depth(builder, default_tokenizer, task, length, depth):
    trial = make_trial(task, 0, length, depth)
    p = build_task_prompt(builder, trial, length)
    assert len(p.ids) == length
    dec = default_tokenizer.decode
    for ins, (s, e), (a, b) in zip(trial.inserts, p.spans, p.sentences):
        assert dec(p.ids[s:e]).strip() == ins.value  # the value's tokens, exactly
        assert dec(p.ids[a:b]) == " " + ins.text  # the whole sentence, exactly
        assert a <= s < e <= b
    ordered = sorted(p.sentences)
    assert all(x[1] <= y[0] for x, y in zip(ordered, ordered[1:]))  # no two overlap
    # removing every insert leaves template + trimmed haystack + template, untouched
    keep = [i for i in range(length) if not any(a <= i < b for a, b in p.sentences)]
    before, after = builder.template(trial.question)
    assert [p.ids[i] for i in keep] == before + builder.haystack[: p.haystack_tokens].tolist() + after
    # the asked needle goes where the single needle would at this depth
    first = next(j for j, i in enumerate(trial.inserts) if i.asked)
    assert p.points[first] == builder.insertion_point(p.haystack_tokens, depth) == p.insert_at
    assert p.needle_span == p.spans[first]
    qs, qe = p.question_span
    assert dec(p.ids[qs:qe]).strip() == trial.question


@pytest.mark.parametrize("task", GENERATED)
def test_same_seed_same_bytes_and_values_once(builder, default_tokenizer, task):
    a, b = make_trial(task, 3, 800, 40), make_trial(task, 3, 800, 40)
    assert a == b and build_task_prompt(builder, a, 800).ids == build_task_prompt(builder, b, 800).ids
    assert make_trial(task, 4, 800, 40) != a and make_trial(task, 3, 800, 40, variant=1) != a
    assert make_trial(task, 3, 800, 40, variant=0) == a
    values = [i.value for i in a.inserts]
    assert len(set(values)) == len(values)
    text = default_tokenizer.decode(build_task_prompt(builder, a, 800).ids)
    for i in a.inserts:
        assert text.count(i.text) == 1
        # a key-value needle's number once; a vt variable assigned once (and read by the next link)
        assert text.count(i.value if task != "vt" else f"VAR {i.value} =") == 1
    assert set(a.answers) == {i.value for i in a.inserts if i.asked}


def test_what_each_task_asks():
    mk, mv, mq, vt = (make_trial(t, 0, 1000, 50) for t in GENERATED)
    assert [i.asked for i in mk.inserts] == [True, False, False, False]
    assert len({i.text.split(" is:")[0] for i in mk.inserts}) == 4  # other keys
    assert len(mv.answers) == 4 and len({i.text.split(" is:")[0] for i in mv.inserts}) == 1  # one key
    assert len(mq.answers) == 4 and all(i.text.split("for ")[1].split(" is")[0] in mq.question for i in mq.inserts)
    chain = [i for i in vt.inserts if i.asked]
    assert vt.answers == tuple(i.value for i in chain) and len(chain) == 4
    assert chain[0].text.split(" = ")[1].rstrip(".") in vt.question
    assert all(f"VAR {b.value} = VAR {a.value}." == b.text for a, b in zip(chain, chain[1:]))
    assert [i.depth for i in chain] == sorted(i.depth for i in chain) and chain[0].depth == 50


def test_vt_chain_in_order_in_the_prompt(builder):
    for depth in (0, 30, 100):
        trial = make_trial("vt", 1, 900, depth)
        p = build_task_prompt(builder, trial, 900)
        starts = [s for (s, _), i in zip(p.sentences, trial.inserts) if i.asked]
        assert starts == sorted(starts)


def test_string_match_scores_copies_of_distractors_zero():
    trial = make_trial("multikey", 0, 500, 50)
    wrong = trial.distractors()[0].value
    assert string_match(f"The special magic number is {wrong}.", trial.answers) == 0.0
    assert string_match(f"The number is {trial.answers[0]}.", trial.answers) == 1.0
    mv = make_trial("multivalue", 0, 500, 50)
    assert string_match(" ".join(mv.answers[:3]), mv.answers) == 0.75


def test_bad_tasks(builder):
    with pytest.raises(UserError, match="not a task"):
        check_tasks(["needle"])
    with pytest.raises(UserError, match="twice"):
        check_tasks(["vt", "vt"])
    with pytest.raises(UserError, match="overhead"):
        build_task_prompt(builder, make_trial("vt", 0, 10, 0), 10)
