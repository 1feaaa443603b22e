"""RULER-style retrieval tasks: several needles in one haystack, some asked, some distractors.

``single`` is the classic test (one needle from the needles file, ``PromptBuilder.build``),
left exactly as it was. The others follow RULER's descriptions (Hsieh et al. 2024), with
generators of our own: pure Python, seeded, offline, over any haystack.

- ``multikey``: the asked needle among distractors of the same template with other keys;
- ``multivalue``: one key with several values, all to be returned;
- ``multiquery``: several keys asked at once, each value to be returned;
- ``vt`` (variable tracking): a chain ``VAR A = 1234567. VAR B = VAR A. ...``, beside a
  distractor chain; name every variable that holds the asked value.

A needle of the key-value tasks reads "One of the special magic numbers for pear is:
3390172."; its *value* (what an answer must hold) is the number. A ``vt`` statement's value
is the variable it assigns. Every inserted sentence sits at a sentence end of the haystack
(as ``PromptBuilder.insertion_point``); the first asked needle at the cell's depth, the others
at seeded random depths (a chain's links in order, after its first). ``TaskPrompt`` carries
the token span of every value, so copies from the asked needle and from distractors can be
told apart. A trial is right when every asked value is a substring of the response (RULER's
string match):

    >>> t = make_trial("multikey", seed=0, context_length=500, depth=50)
    >>> [i.asked for i in t.inserts], t.answers == (t.inserts[0].value,)
    ([True, False, False, False], True)
    >>> string_match("It is " + t.answers[0] + ".", t.answers), string_match("no idea", t.answers)
    (1.0, 0.0)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import UserError
from .prompt import Prompt, PromptBuilder

TASKS = ("single", "multikey", "multivalue", "multiquery", "vt")
MULTI_ANSWER = ("multivalue", "multiquery", "vt")  # answers span several lines: no stop at a newline
ANSWER_TOKENS = 120  # new tokens a multi-answer task needs at least (four 7-digit values and their words)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
KEYS = (
    "apple", "pear", "plum", "cherry", "lemon", "mango", "peach", "grape", "melon", "olive", "onion", "carrot",
    "garlic", "pepper", "tomato", "potato", "turnip", "radish", "walnut", "almond", "hazel", "maple", "willow",
    "cedar", "birch", "spruce", "falcon", "heron", "otter", "badger", "beaver", "walrus", "rabbit", "turtle",
    "lizard", "salmon", "trout", "oyster", "lobster", "violin", "guitar", "trumpet", "piano", "harp", "anchor",
    "lantern", "compass", "ladder", "hammer", "kettle", "candle", "mirror", "pillow", "blanket", "basket",
)
COUNTS = {"multikey": 4, "multivalue": 4, "multiquery": 4}  # needles per trial (RULER's defaults)
VT_CHAIN = 4  # variables per chain (3 hops)
VT_CHAINS = 2  # the asked chain and a distractor chain


@dataclass(frozen=True)
class Insert:
    """One sentence put into the haystack: its ``value``, whether it is asked, its depth (%)."""

    text: str
    value: str
    asked: bool
    depth: float


@dataclass(frozen=True)
class Trial:
    """One trial of a task: what is inserted, what is asked, and the values to return."""

    task: str
    inserts: tuple[Insert, ...]
    question: str
    answers: tuple[str, ...]

    def distractors(self) -> list[Insert]:
        return [i for i in self.inserts if not i.asked]


@dataclass(frozen=True)
class TaskPrompt(Prompt):
    """A task's prompt: ``needle_span`` is the first asked value's tokens; ``spans`` holds the
    value tokens [s, e) of every insert (in ``trial.inserts`` order), ``sentences`` their
    whole sentences, ``points`` where each went in the trimmed haystack."""

    trial: Trial | None = None
    spans: tuple[tuple[int, int], ...] = ()
    sentences: tuple[tuple[int, int], ...] = ()
    points: tuple[int, ...] = ()

    def asked_spans(self) -> list[tuple[int, int]]:
        return [s for s, i in zip(self.spans, self.trial.inserts) if i.asked]

    def distractor_spans(self) -> list[tuple[int, int]]:
        return [s for s, i in zip(self.spans, self.trial.inserts) if not i.asked]


def check_tasks(tasks) -> tuple[str, ...]:
    """The tasks asked for, checked: known names, each once.

    >>> check_tasks(("single", "vt"))
    ('single', 'vt')
    >>> check_tasks(("niah",))
    Traceback (most recent call last):
    ...
    retrieval_head.errors.UserError: --task niah is not a task; choose from single, multikey, multivalue, multiquery, vt
    """
    tasks = tuple(tasks or ())
    if not tasks:
        raise UserError(f"--task needs at least one task; choose from {', '.join(TASKS)}")
    for t in tasks:
        if t not in TASKS:
            raise UserError(f"--task {t} is not a task; choose from {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise UserError("--task lists a task twice; pass each task once")
    return tasks


def _number(rng: random.Random, used: set) -> str:
    """A fresh 7-digit value (RULER's), never one already used in this trial."""
    while True:
        v = str(rng.randint(1_000_000, 9_999_999))
        if v not in used:
            used.add(v)
            return v


def _variable(rng: random.Random, used: set) -> str:
    """A fresh five-letter upper-case variable name."""
    while True:
        v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if v not in used:
            used.add(v)
            return v


def _key_value(task: str, rng: random.Random, depth: float) -> Trial:
    n = COUNTS[task]
    used: set = set()
    keys = rng.sample(KEYS, 1 if task == "multivalue" else n)
    if task == "multivalue":
        keys = keys * n
    asked = [True] * n if task != "multikey" else [True] + [False] * (n - 1)
    depths = [float(depth)] + [rng.uniform(0, 100) for _ in range(n - 1)]
    inserts = []
    for k, a, d in zip(keys, asked, depths):
        v = _number(rng, used)
        inserts.append(Insert(NEEDLE.format(key=k, value=v), v, a, d))
    if task == "multiquery":
        question = f"What are all the special magic numbers for {', '.join(keys[:-1])}, and {keys[-1]} " \
                   "mentioned in the provided text?"
    elif task == "multivalue":
        question = f"What are all the special magic numbers for {keys[0]} mentioned in the provided text?"
    else:
        question = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
    return Trial(task, tuple(inserts), question, tuple(i.value for i in inserts if i.asked))


def _chain(rng: random.Random, used: set, asked: bool, first: float) -> list[Insert]:
    """One chain of assignments, the value first, each link at a depth after the last."""
    value = _number(rng, used)
    names = [_variable(rng, used) for _ in range(VT_CHAIN)]
    depths = [first] + sorted(rng.uniform(first, 100) for _ in range(VT_CHAIN - 1))
    texts = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    return [Insert(t, n, asked, d) for t, n, d in zip(texts, names, depths)]


def _vt(rng: random.Random, depth: float) -> Trial:
    used: set = set()
    asked = _chain(rng, used, True, float(depth))
    others = [x for _ in range(VT_CHAINS - 1) for x in _chain(rng, used, False, rng.uniform(0, 100))]
    value = asked[0].text.split(" = ")[1].rstrip(".")
    question = f"Find all variables that are assigned the value {value} in the text above."
    return Trial("vt", tuple(asked + others), question, tuple(i.value for i in asked))


def make_trial(task: str, seed: int, context_length: int, depth: float, variant: int = 0) -> Trial:
    """The trial of one cell: the same (task, seed, length, depth, variant) always gives the
    same trial. ``variant``: a sweep's needle id, so each needle of a detection sweep draws
    trials of its own (its haystack is the needle's)."""
    if task not in TASKS or task == "single":
        raise ValueError(f"make_trial builds the generated tasks, not {task!r}")
    tail = f":{variant}" if variant else ""  # variant 0 keeps the key every first-needle trial had
    rng = random.Random(f"{task}:{seed}:{context_length}:{depth}{tail}")  # str seeds hash stably (sha512)
    return _vt(rng, depth) if task == "vt" else _key_value(task, rng, depth)


def _value_chars(insert: Insert) -> tuple[int, int]:
    """Characters [a, b) of an insert's value: its first occurrence (a vt link's left side)."""
    a = insert.text.find(insert.value)
    return a, a + len(insert.value)


def build_task_prompt(builder: PromptBuilder, trial: Trial, context_length: int) -> TaskPrompt:
    """A trial's prompt, exactly ``context_length`` tokens, every value's token span known.

    Inserts are tokenized each with its leading space (as a needle is) and spliced in as ids;
    inserts that land on the same sentence end go in ``trial.inserts`` order."""
    before, after, q = builder.layout(trial.question)
    pieces = [builder.sentence_tokens(i.text, _value_chars(i), f"{trial.task} insert") for i in trial.inserts]
    n = context_length - len(before) - len(after) - sum(len(ids) for ids, _ in pieces)
    if n < 0:
        raise UserError(f"context length {context_length} is below the {trial.task} prompt's fixed overhead "
                        f"({context_length - n} tokens); raise --s")
    if n > len(builder.haystack):
        raise UserError(f"the haystack has {len(builder.haystack)} tokens, too short for context length "
                        f"{context_length}; lower --e or pass a larger --haystack_dir")
    points = [builder.insertion_point(n, i.depth) for i in trial.inserts]
    order = sorted(range(len(points)), key=lambda j: (points[j], j))
    ctx = builder.haystack[:n].tolist()
    ids, last = list(before), 0
    spans, sentences = [None] * len(points), [None] * len(points)
    for j in order:
        ids += ctx[last:points[j]]
        last = points[j]
        (pid, (a, b)), s = pieces[j], len(ids)
        spans[j], sentences[j] = (s + a, s + b), (s, s + len(pid))
        ids += pid
    ids += ctx[last:] + after
    q0 = len(ids) - len(after)
    first = next(j for j, i in enumerate(trial.inserts) if i.asked)
    return TaskPrompt(ids=ids, needle_span=spans[first], insert_at=points[first], haystack_tokens=n,
                      question_span=(q0 + q[0], q0 + q[1]) if q is not None else None, context_end=q0, trial=trial,
                      spans=tuple(spans), sentences=tuple(sentences), points=tuple(points))


def string_match(response: str, answers) -> float:
    """Fraction of ``answers`` found in ``response`` (case-insensitive): RULER's string match.

    >>> string_match("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"])
    0.6666666666666666
    """
    text = response.lower()
    return sum(a.lower() in text for a in answers) / len(answers)
