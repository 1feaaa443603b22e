"""Every press by name, and ``make_press``: a press from the command line's ``--press NAME``,
its parameters and, for the presses that rank heads (``duo``, ``headkv``), a head file's scores
per KV head (``headfiles.load.load_ranking(path, shape, "kv")``).

    >>> from retrieval_head.models.shape import ModelShape
    >>> shape = ModelShape(2, 4, 2, 8, None, (None,) * 2)  # layers, heads, KV heads, head_dim
    >>> sorted(PRESSES)
    ['adakv', 'duo', 'headkv', 'knorm', 'pyramidkv', 'snapkv', 'streaming_llm']
    >>> make_press("adakv", shape, press="knorm", alpha=0.1)
    AdaKV(press=Knorm(), alpha=0.1)
    >>> try:
    ...     make_press("snap", shape)
    ... except UserError as e:
    ...     print(e)
    no press 'snap': choose one of adakv, duo, headkv, knorm, pyramidkv, snapkv, streaming_llm
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import UserError
from ..models.shape import ModelShape
from .adakv import AdaKV
from .duo import Duo
from .headkv import HeadKV
from .knorm import Knorm
from .pyramidkv import PyramidKV
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM

PRESSES = {cls.name: cls for cls in (StreamingLLM, Duo, SnapKV, Knorm, PyramidKV, AdaKV, HeadKV)}
RANKED = ("duo", "headkv")  # the presses that take a head file's scores


def make_press(name: str, shape: ModelShape, head_scores: torch.Tensor | None = None, **params):
    """The press ``name`` with ``params`` (its dataclass fields); ``head_scores`` (``[layers,
    kv_heads]``) for ``duo`` and ``headkv``, refused for the others; ``adakv``'s ``press`` may
    be a name (a scorer press made with its defaults). Every mistake is a ``UserError``."""
    if name not in PRESSES:
        raise UserError(f"no press {name!r}: choose one of {', '.join(sorted(PRESSES))}")
    cls = PRESSES[name]
    if name in RANKED:
        if head_scores is None:
            raise UserError(f"--press {name} ranks heads: give a head file (--head_score)")
        grid = (shape.num_layers, shape.num_kv_heads)
        if tuple(head_scores.shape) != grid:
            raise UserError(f"--press {name}: head scores of shape {tuple(head_scores.shape)}, the model's "
                            f"KV heads are {grid[0]} x {grid[1]} (read the file per KV head)")
        params["scores"] = head_scores
    elif head_scores is not None:
        raise UserError(f"--press {name} ranks no heads: it takes no head file")
    if name == "adakv" and isinstance(params.get("press"), str):
        inner = params["press"]
        if inner in RANKED or inner not in PRESSES or not hasattr(PRESSES[inner], "scores"):
            raise UserError(f"adakv wraps a press that scores keys (knorm, pyramidkv, snapkv), not {inner!r}")
        params["press"] = PRESSES[inner]()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UserError(f"--press {name} has no parameter {', '.join(unknown)} (it has {', '.join(sorted(fields))})")
    return cls(**params)
