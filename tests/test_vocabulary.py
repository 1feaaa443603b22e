"""One vocabulary: every old spelling parses to the same settings as its new name (hidden
from ``--help``, one note naming the new flag), and each concept is spelled one way in
every command."""

from __future__ import annotations

import argparse
import re

import pytest

from retrieval_head.cli import parsers
from retrieval_head.options import OldSpelling
from retrieval_head.vocabulary import ALIASES, TERMS

# a value each option can take, by the concept's name (the others need none or take any number)
VALUES = {"head_score": ["h.json"], "unit": ["kv"], "phase": ["context"], "mask_top": ["3", "-2"], "prefix_reuse": []}
NEW_FORM = {"prefix_reuse": ["--no_prefix_reuse"]}  # the on|off alias of a flag that is on by default
OLD_VALUES = {"prefix_reuse": ["off"]}
# what a command line needs besides the option tested (positionals, required flags)
HEADS = {"generate": ["p.txt"], "top": ["top", "F"], "heatmap": ["heatmap", "F"], "compare": ["compare", "A", "B"],
         "export": ["export", "F", "--to", "duo", "--out", "o"], "stability": ["stability", "F"],
         "convergence": ["convergence", "F"]}


def old_spellings():
    """(command, subcommand or None, old flag, term) for every old spelling any parser takes."""
    out = []
    for name, build in parsers.PARSERS.items():
        p = build(f"retrieval-head {name}")
        subs = [(None, p)] + [(s, sp) for a in p._actions if isinstance(a, argparse._SubParsersAction)
                              for s, sp in a.choices.items()]
        for sub, sp in subs:
            out += [(name, sub, flag, a.dest) for a in sp._actions if isinstance(a, OldSpelling)
                    for flag in a.option_strings]
    return out


CASES = old_spellings()


def listed(flag: str, text: str) -> bool:
    """Whether ``flag`` itself (not a longer flag it begins) appears in ``text``."""
    return re.search(rf"{re.escape(flag)}(?![\w-])", text) is not None


def test_every_vocabulary_alias_is_taken_somewhere():
    local = {"--prefix_reuse", "-k", "--seeds"}  # on|off of a default-on flag; heads' own old -k and --seeds
    assert {flag for _, _, flag, _ in CASES} == set(ALIASES) | local


@pytest.mark.parametrize("command,sub,old,dest", CASES, ids=[f"{c} {s or ''} {o}" for c, s, o, _ in CASES])
def test_an_old_spelling_parses_to_the_new_names_settings(command, sub, old, dest, capsys):
    p = parsers.build(command, f"retrieval-head {command}")
    head = HEADS.get(sub or command, [])
    value = VALUES.get(dest, ["1"])
    new = NEW_FORM.get(dest, [f"--{dest}", *value])
    assert vars(p.parse_args([*head, old, *OLD_VALUES.get(dest, value)])) == vars(p.parse_args([*head, *new]))
    assert capsys.readouterr().err.strip().splitlines() == [f"note: {old} is now {new[0]}"]
    shown = p if sub is None else next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[sub]
    assert not listed(old, shown.format_help().split("options:")[1])  # hidden: only the new name is listed


def test_a_concept_has_one_flag_in_every_command():
    """No command lists an old spelling, and a term's flag means the term wherever it appears
    (its help starts with the term's meaning, or the command states its own use of it)."""
    for name, build in parsers.PARSERS.items():
        text = build(f"retrieval-head {name}").format_help()
        for old in ALIASES:
            assert not listed(old, text), (name, old)
    mask = parsers.build("mask", "m")
    generate = parsers.build("generate", "g")
    for term in ("unit", "phase", "keep_full", "keep_fraction", "sink", "recent", "head_score", "question",
                 "chat_template", "max_new_tokens", "threads"):
        for p in (mask, generate):
            assert any(TERMS[term].flag in a.option_strings for a in p._actions), (p.prog, term)
    units = {a.dest: a.choices for p in (mask, generate) for a in p._actions if a.dest == "unit" and a.choices}
    assert units == {"unit": ("query", "kv")}
