"""The needle test's press conditions (``--press NAME --budget F...``) and what their records add.

A press condition compresses each prompt's KV cache once after its prefill to ``budget`` of its
keys, the press choosing which (``presses``; simulated on the full cache, ``core.pressing``:
the scheduler shares each prompt's plain prefill with the other conditions,
``engine.pressed``). Its folder is ``<model>_press_<name>_b<budget>`` (the leaderboard adds
the ranking of a press that ranks heads by other scores than the head file's: ``duo-random``).
Its record's ``mask`` holds the press, its parameters (``PressMask.describe``), the budget and
the bytes the kept keys would hold (``kv_bytes``: keys kept x 2 (K and V) x head_dim x the
weights' itemsize, over every layer and KV head, at the compression point; in phase context
plus the question's tokens, kept whole), those of the full prompt's cache (``kv_bytes_full``)
and their share (``kv_kept``)::

    >>> press_fields(kept_keys=300, length=100, shape=SHAPE, itemsize=2)   # 300 of 2 layers x 2 KV heads x 100
    {'kv_bytes': 9600, 'kv_bytes_full': 12800, 'kv_kept': 0.75}
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import torch

from ..core.mask import PressMask
from ..errors import UserError
from ..headfiles.load import load_ranking
from ..models.shape import ModelShape
from ..presses.registry import PRESSES, RANKED, make_press
from .condition import Condition, press_label  # noqa: F401 (press_label: re-exported)
from .settings import press_args

SHAPE = ModelShape(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_positions=None, windows=(None,) * 2)


def _typed(name: str, key: str, value: str, kind) -> object:
    """One ``--press_args`` value as its field's type (int, float, bool or a name)."""
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return kind(value) if kind in (int, float) else value
    except ValueError:
        raise UserError(f"--press_args {key}={value}: {name}'s {key} is a{'n' if kind is int else ''} "
                        f"{getattr(kind, '__name__', kind)}") from None


def press_params(name: str, args) -> dict:
    """``--press_args`` typed by the press's fields (a head ranking is no parameter: it comes
    from ``--head_score``); an unknown parameter refused in one line."""
    raw, cls = press_args(args), PRESSES[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints.get(f.name, str) for f in dataclasses.fields(cls) if f.name != "scores"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"--press {name} has no parameter {', '.join(unknown)} (it has {', '.join(sorted(fields))})")
    return {k: _typed(name, k, v, fields[k] if fields[k] in (int, float, bool) else str) for k, v in raw.items()}


def press_folder(model_name: str, name: str, budget: float, ranking: str | None = None, phase: str = "decode") -> str:
    """``<model>_press_<name>[-<ranking>]_b<budget>[_context]``.

    >>> press_folder("M", "snapkv", 0.25), press_folder("M", "duo", 0.1, "random", "context")
    ('M_press_snapkv_b0.25', 'M_press_duo-random_b0.1_context')
    """
    return f"{model_name}_press_{name}{f'-{ranking}' if ranking else ''}_b{budget:g}" + \
        ("" if phase == "decode" else f"_{phase}")


def press_conditions(model_name: str, name: str, budgets, shape: ModelShape, scores: torch.Tensor | None = None,
                     args=(), phase: str = "decode", ranking: str | None = None,
                     seed: int | None = None) -> list[Condition]:
    """One condition per budget of the press ``name`` (its parameters from ``--press_args``);
    ``scores [layers, kv_heads]`` rank the heads of duo and headkv (``ranking``: which scores,
    in the folder's name and the record's ``method``; ``seed``: a random ranking's). Every
    mistake is a ``UserError``, raised before the model loads."""
    if name in RANKED and scores is None:
        raise UserError(f"--press {name} ranks heads: pass --head_score FILE")
    press = make_press(name, shape, scores if name in RANKED else None, **press_params(name, args))
    out = []
    for b in budgets:
        mask = PressMask(press, b, phase)
        mask.planned(shape.max_positions or 1).layer_shares(shape, b)  # a press refusing the budget, refused now
        out.append(Condition("press", 0, mask, seed, press_folder(model_name, name, b, ranking, phase), "kv",
                             method=ranking))
    return out


def kv_scores(path: Path, shape: ModelShape) -> torch.Tensor:
    """float64 ``[layers, kv_heads]``: the ranking a press that ranks heads (duo, headkv) reads
    from a head file of any accepted format, per KV head (a per-query-head file: each group's
    max). The one reader of ``--head_score`` for a ranked press: the needle test, generate, the
    leaderboard's ``headkv@<method>`` and the judge's ``--press``."""
    return load_ranking(Path(path), shape, "kv")[0]


def random_ranking(shape: ModelShape, seed: int) -> torch.Tensor:
    """float64 ``[layers, kv_heads]``: a random head ranking (uniform scores, seeded), the
    reference a ranked press's head file must beat."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape.num_layers, shape.num_kv_heads, generator=g, dtype=torch.float64)


def press_fields(kept_keys: int, length: int, shape: ModelShape, itemsize: int, at: int | None = None) -> dict:
    """A press record's bytes: the kept keys' (K and V) and every token's from the compression
    point ``at`` on (phase context: the question's; none: ``length``), the full cache's at
    ``length`` tokens, and their share."""
    later = 0 if at is None else (length - at) * shape.kv_bytes_per_token(itemsize)
    held = kept_keys * 2 * shape.head_dim * itemsize + later
    full = length * shape.kv_bytes_per_token(itemsize)
    return {"kv_bytes": held, "kv_bytes_full": full, "kv_kept": held / full}


