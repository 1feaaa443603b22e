"""Options declared once, on the settings dataclasses: default, help, choices, flags.

A field declared with ``option(...)`` is both the API's default and the command line's:
``add_options`` turns a dataclass into an argparse group (``--help`` shows each default),
``from_args`` reads it back, and ``fingerprint`` keeps the fields marked ``result=True``
(those that change a result: what a resumed or merged run must share).

Types come from the annotations: ``int``, ``float``, ``str`` (``X | None`` too),
``tuple[int, ...]`` (several values), and ``bool`` (a flag: ``--name`` when the default
is False, ``--no_name`` when it is True). Spellings and meanings of shared concepts come
from ``vocabulary``.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     steps: int = option(50, "decode steps", result=True)
    ...     mode: str = option("count", "score mode", choices=("count", "set"), result=True)
    ...     lengths: tuple[int, ...] | None = option(None, "explicit lengths")
    ...     reuse: bool = option(True, "reuse prefixes")
    >>> p = argparse.ArgumentParser(prog="demo")
    >>> add_options(p, Demo, "demo")
    >>> from_args(Demo, p.parse_args(["--steps", "7", "--lengths", "5", "9", "--no_reuse"]))
    Demo(steps=7, mode='count', lengths=(5, 9), reuse=False)
    >>> fingerprint(Demo(steps=7))
    {'steps': 7, 'mode': 'count'}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any

from .vocabulary import TERMS

_NONE = type(None)


def option(default: Any, help: str | None = None, *, choices: tuple | None = None, flags: tuple[str, ...] = (),
           result: bool = False, metavar: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its command-line description.

    help: None takes the vocabulary's meaning of the field's name (``vocabulary.TERMS``);
    flags: extra visible spellings (the original's ``-s``/``--s_len``); result: the value
    changes a result record; cli: False keeps the field out of the parser (API only). A
    field named after a vocabulary term also parses the term's old spellings (hidden)."""
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices, flags=flags, result=result,
                                                            metavar=metavar, cli=cli))


def _base_type(annotation) -> tuple[type, bool]:
    """(element type, several values) of ``int``, ``str | None``, ``tuple[int, ...] | None``..."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not _NONE)
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _shown(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return "none" if default is None else str(default)


class OldSpelling(argparse.Action):
    """An old spelling of a flag: parses to the new one's value, hidden from ``--help``,
    and says the new name in one line on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_aliases(g, name: str, flag: str, **kw) -> None:
    """Register the vocabulary's old spellings of term ``name`` on ``g`` (hidden)."""
    term = TERMS.get(name)
    for old in term.aliases if term else ():
        if old != flag:
            g.add_argument(old, dest=name, action=OldSpelling, new=flag, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS, **kw)


def meaning(name: str, help: str | None) -> str:
    """A flag's help: its own text, else the vocabulary's meaning of its name."""
    if help is not None:
        return help
    if name not in TERMS:
        raise KeyError(f"option {name!r} has no help and no vocabulary term")
    return TERMS[name].meaning


def add_term(g, name: str, default: Any = None, help: str | None = None, **kw) -> None:
    """A hand-built option spelled and explained by the vocabulary (``--name``, its meaning
    or ``help``, its old spellings hidden); ``kw`` as ``add_argument``'s. Its default is
    shown by the parser's formatter (``ArgumentDefaultsHelpFormatter``).

    >>> p = argparse.ArgumentParser()
    >>> add_term(p, "top", 20, type=int)
    >>> p.parse_args(["--top", "3"]).top
    3
    """
    g.add_argument(f"--{name}", dest=name, default=default, help=meaning(name, help), **kw)
    alias_kw = {k: v for k, v in kw.items() if k in ("type", "nargs", "choices", "metavar")}
    if kw.get("action") == "store_true":
        alias_kw.update(nargs=0, const=True)
    add_aliases(g, name, f"--{name}", **alias_kw)


def old_spelling(g, old: str, dest: str, new: str, **kw) -> None:
    """One command's own old spelling of ``new`` (``-k`` for ``--top``), hidden, with its note."""
    g.add_argument(old, dest=dest, action=OldSpelling, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   **kw)


def add_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One argument group holding an option per ``option`` field of ``cls``."""
    g = parser.add_argument_group(title)
    for f, annotation in _fields(cls):
        m = f.metadata
        kind, several = _base_type(annotation)
        help_text = f"{meaning(f.name, m['help'])} (default: {_shown(f.default)})"
        kw: dict = dict(dest=f.name, default=f.default)
        if kind is bool and f.default is False:
            g.add_argument(f"--{f.name}", *m["flags"], action="store_true", help=help_text, **kw)
            add_aliases(g, f.name, f"--{f.name}", nargs=0, const=True)
            continue
        if kind is bool:  # on by default: --no_<name> turns it off; the old --<name> on|off still parses
            g.add_argument(f"--no_{f.name}", *m["flags"], action="store_false", help=f"{meaning(f.name, m['help'])} "
                           "(default: on; this flag turns it off)", **kw)
            g.add_argument(f"--{f.name}", dest=f.name, action=OldSpelling, new=f"--no_{f.name}", type=on_off,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS, metavar="{on,off}")
            continue
        number = several and kind is not str  # several names (--task, --method) show their own metavar
        kw.update(type=kind, choices=m["choices"], metavar=m["metavar"] or ("N" if number else None))
        if several:
            kw["nargs"] = "+"
        g.add_argument(f"--{f.name}", *m["flags"], help=help_text, **kw)
        add_aliases(g, f.name, f"--{f.name}", **{k: kw[k] for k in ("type", "choices", "metavar", "nargs") if k in kw})


def from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass from parsed arguments (lists become tuples), with ``overrides``."""
    values = {}
    for f, _annotation in _fields(cls):
        v = getattr(args, f.name)
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**(values | overrides))


def fingerprint(obj) -> dict:
    """The fields that change a result, as they read back from JSON."""
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("result")}
    return json.loads(json.dumps(out))
