"""Methods as objects (``retrieval_head.methods``): each method's score of one hand-built row
or attention is known; the scheduler's reads (``engine.reads``) give what the probe and the
tap give; a toy method registered in a few lines runs through detection with no scheduler
change; ``make_method`` refuses what it cannot make."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace
from typing import ClassVar

import pytest
import torch
from helpers import make_inputs, one_thread

from retrieval_head.core.attend import Step
from retrieval_head.core.hook import Hook
from retrieval_head.engine.reads import ArgmaxRead, SpanMassRead, TapRead
from retrieval_head.errors import UserError
from retrieval_head.experiments.detect import DetectSettings, detect
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.methods import registry
from retrieval_head.methods.focus import NeedleMass, QueryFocus, focus_tap
from retrieval_head.methods.induction import Echo, Induction
from retrieval_head.methods.method import PASSING, NeedleMethod
from retrieval_head.methods.registry import METHODS, chosen, make_method
from retrieval_head.methods.retrieval import Retrieval


def prompt(n=8, needle=(2, 4), question=(5, 7)) -> Prompt:
    return Prompt(
        ids=list(range(100, 100 + n)), needle_span=needle, insert_at=0, haystack_tokens=0, question_span=question
    )


def step_of(probs: list[list[float]]) -> Step:
    """A decode step whose rows' (one head each) probabilities are ``probs`` (scores: their logs)."""
    p = torch.tensor(probs).reshape(len(probs), 1, 1, -1)
    return Step(p.log(), p, torch.zeros(len(probs), 1, 1, 1))


def decode(read, prompts, steps: list[list[list[float]]], query_position: int, decoding=None):
    """Run ``read`` over hand-built decode steps (``steps[t][row]``: row's probabilities);
    ``decoding[t]``: the rows still decoding at step t (all by default). One layer."""
    r = read.open(prompts, 1, query_position)
    for t, probs in enumerate(steps):
        call = SimpleNamespace(layer=0, is_decode=True)
        assert r.hook.computes(call)
        r.hook.computed(call, step_of(probs))
        for row in decoding[t] if decoding else range(len(prompts)):
            r.step(row, t)
    return r


def test_retrieval_scores_a_hand_built_row():
    # needle ids 102, 103 at positions 2..3; 2 heads; head 0 copies both tokens, head 1 looks at 2 but emits 103
    p = prompt()
    positions = torch.tensor([[[2, 2]], [[3, 7]]])  # [steps, layers, heads]
    row = SimpleNamespace(job=SimpleNamespace(prompt=p), positions=positions, ids=[102, 103])
    assert Retrieval().score_row(row).tolist() == [[1.0, 0.5]]
    row.ids = [102, 102]  # head 0 copies 102 once; the second step looks at 103 but emits 102
    assert Retrieval().score_row(row).tolist() == [[0.5, 0.5]]
    assert Retrieval(score="set").score_row(
        SimpleNamespace(job=row.job, positions=torch.tensor([[[2]], [[2]]]), ids=[102, 102])
    ).tolist() == [[0.5]]


def test_argmax_read_gives_absolute_positions_per_row_and_step():
    # 2 rows, keys 0..4 at step 0 (query at 4), 0..5 at step 1; row 1 stops after step 0
    steps = [
        [[0.1, 0.6, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.6]],
        [[0.1, 0.1, 0.1, 0.1, 0.1, 0.5], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]],
    ]
    r = decode(ArgmaxRead(), [prompt(), prompt()], steps, query_position=4, decoding=[[0, 1], [0]])
    assert r.result(0).tolist() == [[[1]], [[5]]]  # [steps, layers, heads]
    assert r.result(1).tolist() == [[[4]]]


def test_needle_mass_is_the_span_mass_averaged_over_the_rows_steps():
    # row 0's needle [1, 3): 0.9 then 0.1 -> 0.5; row 1's [0, 1): 0.2, and it stops after step 0
    steps = [[[0.05, 0.45, 0.45, 0.05], [0.2, 0.3, 0.3, 0.2]], [[0.3, 0.05, 0.05, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2]]]
    r = decode(SpanMassRead(), [prompt(needle=(1, 3)), prompt(needle=(0, 1))], steps, 3, decoding=[[0, 1], [0]])
    rows = [SimpleNamespace(reads={"span_mass": r.result(k)}) for k in (0, 1)]
    assert NeedleMass().score_row(rows[0]).flatten().tolist() == pytest.approx([0.5])
    assert NeedleMass().score_row(rows[1]).flatten().tolist() == pytest.approx([0.2])
    assert r.result(0).dtype == torch.float64


def test_query_focus_is_the_question_rows_mass_on_the_needle():
    # 7 keys; the question's rows 5 and 6 put log-probabilities on keys; needle [2, 4)
    probs = {5: [0.1, 0.1, 0.5, 0.25, 0.05, 0.0, 0.0], 6: [0.0, 0.25, 0.25, 0.0, 0.25, 0.0, 0.25]}
    key = torch.eye(7).reshape(1, 1, 7, 7)
    query = torch.full((1, 1, 7, 7), 0.0)
    for row, p in probs.items():
        query[0, 0, row] = torch.tensor([math.log(x) if x else -1e4 for x in p])
    (read,) = QueryFocus().reads()
    assert isinstance(read, TapRead) and read.phase == "prefill"
    r = read.open([prompt(n=7, needle=(2, 4), question=(5, 7))], 1)
    assert r.first_row == 5  # the rows the tap needs prefilled
    r.hook.observe(0, query, key, None, 1.0)
    row = SimpleNamespace(reads={read.name: r.result(0)})
    assert QueryFocus().score_row(row).flatten().tolist() == pytest.approx([(0.75 + 0.25) / 2])
    assert "tap_s" in r.cost()


def test_query_focus_refuses_a_prompt_without_question_offsets():
    with pytest.raises(UserError, match="question's tokens"):
        QueryFocus().check(prompt(question=None))
    Retrieval().check(prompt(question=None))  # the others read no question


def test_methods_are_made_by_name_with_their_parameters():
    assert make_method("retrieval", score="set") == Retrieval(score="set")
    assert make_method("echo", period=8, seeds=[3]) == Echo(period=8, seeds=(3,))
    with pytest.raises(UserError, match="no method 'focus'"):
        make_method("focus")
    with pytest.raises(UserError, match="query-focus has no parameter score"):
        make_method("query-focus", score="set")
    st = DetectSettings(score="set", repeat_period=16, repeat_count=3, repeat_seeds=(5,))
    assert chosen(st, ("retrieval", "induction", "query-focus")) == (
        Retrieval(score="set"),
        Induction(period=16, repeats=3, seeds=(5,)),
        QueryFocus(),
    )
    assert [type(m).name for m in METHODS.values()] == list(METHODS)
    assert focus_tap(prompt()).rows.tolist() == [5, 6]


def test_the_repeated_token_pass_reads_the_registered_keys():
    # repeat_scores's default columns (notebooks, bench) are the registry's repeat methods and their keys,
    # the keys repeat_rows's worked example spells out: induction p - period + 1, echo p - period
    from retrieval_head.methods.repeat import KEYS, repeat_rows

    assert registry.repeat_keys() == dict(KEYS) == {"induction": 1, "echo": 0}
    rows, ind, echo = repeat_rows(period=3, repeats=2, offset=1)
    assert (ind - rows + 3).unique().tolist() == [Induction.key] and (echo - rows + 3).unique().tolist() == [Echo.key]


def test_output_files_are_the_originals_names(tmp_path):
    assert list(Retrieval().outputs(tmp_path, "M").values()) == [
        tmp_path / "M.json",
        tmp_path / "M.kv_max.json",
        tmp_path / "M.kv_mean.json",
    ]
    assert list(Echo().outputs(tmp_path, "M").values()) == [tmp_path / "M.echo.json", tmp_path / "M.echo.manifest.json"]


# A toy method, registered in a few lines: each head's score is the number of decode steps of
# the row, read by a decode read of its own; the scheduler is not told anything about it.
@dataclass(frozen=True)
class StepCount:
    name: str = "step_count"
    phase: str = "decode"

    def open(self, prompts, num_layers, query_position=0):
        return _Counting(len(prompts))


class _Counting:
    first_row = None

    def __init__(self, rows: int):
        self.hook, self.steps = Hook(), [0] * rows

    def step(self, row, t):
        self.steps[row] += 1

    def result(self, row):
        return self.steps[row]

    def cost(self):
        return {}


@dataclass(frozen=True)
class Toy(NeedleMethod):
    name: ClassVar[str] = "toy"
    counts: ClassVar[str] = PASSING
    field: ClassVar[str] = "toy"

    def reads(self):
        return (StepCount(),)

    def score_row(self, row):
        return torch.full((2, 4), float(row.reads["step_count"]))  # the tiny model's layers x heads


@pytest.fixture
def toy_registered(monkeypatch):
    """``Toy`` in the registry: its one line in ``METHODS``, seen by every module that reads it."""
    table = MappingProxyType(dict(METHODS, toy=Toy()))
    for name, module in list(sys.modules.items()):
        if name.startswith("retrieval_head") and getattr(module, "METHODS", None) is METHODS:
            monkeypatch.setattr(module, "METHODS", table)
    return table


def test_a_registered_toy_method_runs_through_detection(toy_registered, tmp_path_factory, default_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inputs = make_inputs(tmp_path_factory.mktemp("toy"), default_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(inputs["tiny"]).eval()
    tok = AutoTokenizer.from_pretrained(inputs["tiny"])
    st = DetectSettings(
        context_lengths=(120,),
        depth_percents=(30, 70),
        rouge_threshold=-1.0,
        max_new_tokens=4,
        needles=str(inputs["needles_ok"]),
        method=("toy", "retrieval"),
    )
    assert st.methods() == ("retrieval", "toy") and registry.make_method("toy") == Toy()
    with one_thread():
        result = detect(model, tok, st, progress=False)
    assert result.trials
    for t in result.trials:
        assert t["toy"] == [[float(len(t["response_ids"]))] * 4] * 2  # one count per decode step
        assert "head_scores" in t
    counter = result.head_counter("toy")
    assert counter["0-0"] == [float(len(t["response_ids"])) for t in result.passed()]
