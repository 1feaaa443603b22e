"""The original's head-score file: ``head_score/<model>.json``, read, checked whole, written.

``head_score/<model>.json`` is the original's format, one line of JSON::

    {"0-0": [0.0, 0.25], "0-1": [0.0, 0.0], ..., "29-8": [...]}

one key per query head (``layer-head``, 0-based, layer-major), each list the head's
score in every counted trial (canonical trial order). The original README's snippet
works on it::

    import json, numpy as np
    d = json.loads(open("head_score/SmolLM2-135M-Instruct.json").readline())
    sorted(((k, np.mean(v)) for k, v in d.items()), key=lambda x: -x[1])[:3]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import UserError
from ..store.files import dump_json, write_atomic
from .validate import REGENERATE, DuplicateKey, describe, finite_number, no_duplicate_keys, parse_head_key

FORMAT = '{"layer-head": [score per trial]}'  # as the messages spell it


def write_head_scores(path: Path, head_counter: dict[str, list[float]]) -> None:
    """The original's one-line JSON."""
    write_atomic(path, dump_json(head_counter, one_line=True))


def read_head_file(path: Path) -> dict:
    """The raw ``{"layer-head": [scores]}`` object of a head-score file's first line,
    unchecked beyond being JSON (see ``validate_head_scores``); a key written twice is an
    error here, since ``json.loads`` would silently keep the last one."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"head_score path {path} is a folder, not a file; pass --head_score FILE (a head_score/*.json)")
    if not path.is_file():
        raise UserError(f"head_score file {path} does not exist; run retrieval_head_detection.py first or pass "
                        "--head_score")
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0]
    except OSError as e:
        raise UserError(f"cannot read head_score file {path}: {e.strerror or e}; check its permissions") from None
    except (IndexError, UnicodeDecodeError):
        raise UserError(f"head_score file {path} is not one line of JSON; expected {FORMAT}") from None
    try:
        return json.loads(first, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError:
        raise UserError(f"head_score file {path} is not one line of JSON; expected {FORMAT}") from None
    except DuplicateKey as e:
        raise UserError(f"head_score file {path} names key {e.args[0]!r} twice; a merged or hand-edited file? "
                        f"{REGENERATE}") from None


def validate_head_scores(data, path: Path | str = "<data>",
                         shape: tuple[int, int] | None = None) -> dict[tuple[int, int], list]:
    """Check a head-score object WHOLE; return ``{(layer, head): [scores]}``.

    Keys ``layer-head`` (non-negative integers), each head once, a full layers x heads
    grid (of ``shape`` when given), every value a list of finite numbers (not booleans),
    all lists the same length (one score per counted trial; 0 trials: all empty).

    >>> validate_head_scores({"0-0": [0.5, 1], "0-1": [0, 0.25]})
    {(0, 0): [0.5, 1], (0, 1): [0, 0.25]}
    >>> validate_head_scores({"0-0": [0.5, 1], "0-1": [0]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    retrieval_head.errors.UserError: head_score file <data>: lists are not the same length (0-0 has 2 scores, ...
    """
    where = f"head_score file {path}"
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where} holds no heads; expected {FORMAT}")
    keys: dict[tuple[int, int], list] = {}
    spelled: dict[tuple[int, int], str] = {}
    for k, v in data.items():
        try:
            lh = parse_head_key(k)
        except UserError:
            raise UserError(f"{where}: key {k!r} is not 'layer-head' (two non-negative integers, e.g. '0-3'); "
                            f"expected {FORMAT}") from None
        if lh in keys:
            raise UserError(f"{where} names head {lh[0]}-{lh[1]} twice ({spelled[lh]!r} and {k!r}); a merged or "
                            f"hand-edited file? {REGENERATE}")
        keys[lh], spelled[lh] = v, k
    layers = 1 + max(l for l, _ in keys)
    heads = 1 + max(h for _, h in keys)
    if len(keys) != layers * heads:
        gap = next(f"{l}-{h}" for l in range(layers) for h in range(heads) if (l, h) not in keys)
        raise UserError(f"{where} has {len(keys)} heads, not a full {layers} x {heads} grid (no {gap}); {REGENERATE}")
    if shape is not None and (layers, heads) != tuple(shape):
        raise UserError(
            f"{where} is for {layers} layers x {heads} heads, the model has "
            f"{shape[0]} x {shape[1]}; pass the file made for this model"
        )
    first = None
    for (l, h), v in sorted(keys.items()):
        if not isinstance(v, list):
            raise UserError(f"{where}: {l}-{h} is {describe(v)}, not a list of numbers; expected {FORMAT}")
        bad = next((i for i, x in enumerate(v) if not finite_number(x)), None)
        if bad is not None:
            raise UserError(f"{where}: {l}-{h} holds {describe(v[bad])} at trial {bad}; every score must be a "
                            f"finite number: a corrupted file? {REGENERATE}")
        if first is None:
            first = (l, h, len(v))
        elif len(v) != first[2]:
            raise UserError(f"{where}: lists are not the same length ({first[0]}-{first[1]} has {first[2]} scores, "
                            f"{l}-{h} has {len(v)}); every head needs one score per trial: a merged or corrupted "
                            f"file? {REGENERATE}")
    return keys


KV_NAMES = (".kv_max.json", ".kv_mean.json")  # detection's per-KV-head files of a GQA model


def mean_grid(keys: dict[tuple[int, int], list], path: Path | str = "<data>") -> list[list[float]]:
    """Each head's mean over its trials (0 for 0 trials) as a ``[layers][heads]`` list, from
    ``validate_head_scores``'s answer.

    >>> mean_grid({(0, 0): [0.5, 1], (0, 1): [0, 0.25]})
    [[0.75, 0.125]]
    """
    layers, heads = (1 + max(x) for x in zip(*keys))
    out = [[0.0] * heads for _ in range(layers)]
    for (l, h), v in keys.items():
        mean = sum(v) / len(v) if v else 0.0
        if not math.isfinite(mean):
            raise UserError(f"head_score file {path}: the scores of {l}-{h} are too large to average; {REGENERATE}")
        out[l][h] = mean
    return out


def states_kv(path: Path, columns: int) -> bool:
    """Whether an original-format file of ``columns`` columns is per KV head: by its name
    (detection's ``<model>.kv_max.json`` / ``.kv_mean.json``) or by the detection manifest
    beside it (``columns`` = the model's KV heads, fewer than its query heads)."""
    from ..store.manifest import shape_beside

    if Path(path).name.endswith(KV_NAMES):
        return True
    found = shape_beside(Path(path))
    return bool(found) and found[1]["kv_heads"] < found[1]["heads"] and columns == found[1]["kv_heads"]
