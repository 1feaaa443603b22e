"""Checking JSON head files: the pieces every reader shares (the original's format and the
other tools' formats, ``original`` and ``foreign``).

A head file is user input: a defect is a ``UserError`` that names the file, the place and
the fix, never a traceback. These helpers say what a value is (``describe``), whether it is
a score (``finite_number``), read a ``layer-head`` key (``parse_head_key``) and refuse an
object key written twice (``no_duplicate_keys``; ``json.loads`` would keep the last one
silently).

    >>> [describe(x) for x in (float("nan"), True, "0.5", None, [1], {}, 2.5)]
    ['NaN', 'true (a boolean)', '"0.5" (a string)', 'null', 'a list', 'an object', '2.5']
    >>> [finite_number(x) for x in (0.5, 3, True, float("inf"), 10 ** 400, "1")]
    [True, True, False, False, False, False]
    >>> parse_head_key("12-3")
    (12, 3)
    >>> json.loads('{"0-0": [1], "0-0": [2]}', object_pairs_hook=no_duplicate_keys)
    Traceback (most recent call last):
    ...
    retrieval_head.headfiles.validate.DuplicateKey: 0-0
"""

from __future__ import annotations

import json
import math
import re

from ..errors import UserError

HEAD_KEY = re.compile(r"([0-9]+)-([0-9]+)")  # "layer-head", both 0-based
REGENERATE = "regenerate it with retrieval_head_detection.py"  # the fix for a corrupted head-score file


class DuplicateKey(Exception):
    """An object key written twice (raised by ``no_duplicate_keys``; the reader turns it into
    a ``UserError`` naming its file)."""


def no_duplicate_keys(pairs: list) -> dict:
    """``json.loads``'s ``object_pairs_hook``: the object, or ``DuplicateKey`` on a key seen twice."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


def parse_head_key(key: str) -> tuple[int, int]:
    """``"layer-head"`` (two non-negative integers) as ``(layer, head)``."""
    m = HEAD_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        raise UserError(f"head_score key {key!r} is not 'layer-head' (two non-negative integers, e.g. '0-3')")
    return int(m[1]), int(m[2])


def describe(x) -> str:
    """A JSON value as the file spells it, and its kind where that is the problem."""
    if isinstance(x, (list, dict)):
        return "a list" if isinstance(x, list) else "an object"
    text = json.dumps(x)
    text = text if len(text) <= 30 else text[:27] + "..."
    kind = {bool: "a boolean", str: "a string"}.get(type(x))
    return f"{text} ({kind})" if kind else text


def finite_number(x) -> bool:
    """A JSON number that is a score: an int or a float, finite, not a boolean."""
    if type(x) not in (int, float):  # bool is an int subclass: true would count as 1
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False
