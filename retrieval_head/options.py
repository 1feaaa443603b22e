"""Options declared once, on the settings dataclasses: default, help, choices, flags.

A field declared with ``option(...)`` is both the API's default and the command line's:
``add_options`` turns a dataclass into an argparse group (``--help`` shows each default),
``from_args`` reads it back, and ``fingerprint`` keeps the fields marked ``result=True``
(those that change a result: what a resumed or merged run must share).

Types come from the annotations: ``int``, ``float``, ``str`` (``X | None`` too),
``tuple[int, ...]`` (several values), and ``bool`` (a flag when the default is False,
``on``/``off`` when it is True).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     steps: int = option(50, "decode steps", result=True)
    ...     mode: str = option("count", "score mode", choices=("count", "set"), result=True)
    ...     lengths: tuple[int, ...] | None = option(None, "explicit lengths")
    ...     reuse: bool = option(True, "reuse prefixes")
    >>> p = argparse.ArgumentParser(prog="demo")
    >>> add_options(p, Demo, "demo")
    >>> from_args(Demo, p.parse_args(["--steps", "7", "--lengths", "5", "9", "--reuse", "off"]))
    Demo(steps=7, mode='count', lengths=(5, 9), reuse=False)
    >>> fingerprint(Demo(steps=7))
    {'steps': 7, 'mode': 'count'}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

_NONE = type(None)


def option(default: Any, help: str, *, choices: tuple | None = None, flags: tuple[str, ...] = (),
           result: bool = False, metavar: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its command-line description.

    flags: extra spellings (the original's aliases); result: the value changes a result
    record; cli: False keeps the field out of the parser (API only)."""
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


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _shown(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return "none" if default is None else str(default)


def add_options(parser: argparse.ArgumentParser, cls, title: str) -> None:
    """One argument group holding an option per ``option`` field of ``cls``."""
    g = parser.add_argument_group(title)
    for f, annotation in _fields(cls):
        m = f.metadata
        kind, several = _base_type(annotation)
        names = [f"--{f.name}", *m["flags"]]
        help_text = f"{m['help']} (default: {_shown(f.default)})"
        kw: dict = dict(dest=f.name, default=f.default, help=help_text)
        if kind is bool and f.default is False:
            g.add_argument(*names, action="store_true", **kw)
            continue
        if kind is bool:
            kw.update(type=_on_off, choices=[True, False], metavar="{on,off}")
        else:
            kw.update(type=kind, choices=m["choices"], metavar=m["metavar"] or ("N" if several else None))
        if several:
            kw["nargs"] = "+"
        g.add_argument(*names, **kw)


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

