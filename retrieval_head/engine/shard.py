"""Sweep sharding across processes, GPUs and nodes, merged from files.

Launch with ``torchrun --nproc_per_node N`` (multi-node through torchrun's rendezvous) or
``accelerate launch``: both set ``RANK`` / ``WORLD_SIZE`` (and ``LOCAL_RANK``, which picks
the GPU). ``--rank R --world_size W`` work without a launcher, so a failed shard can be
rerun alone (with ``--resume``). No collective is used: ranks may finish hours apart; each
writes its own trial log and manifest, and whichever finishes last merges the logs into
the single-process outputs (rerunning any finished shard with ``--resume`` merges again).

Trials are split deterministically and balanced by token cost (longest first, each to the
least-loaded shard, ties to the lower rank)::

    >>> [assign([(0, L, d) for L in (100, 300) for d in (0, 50)], lambda k: k[1], 2)[r] for r in (0, 1)]
    [[(0, 100, 0), (0, 300, 0)], [(0, 100, 50), (0, 300, 50)]]
"""

from __future__ import annotations

import os
from typing import Callable, Hashable, Sequence

import torch

from ..errors import UserError


def from_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``--rank/--world_size`` if given, else the launcher's ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    r = rank if rank is not None else int(os.environ.get("RANK", 0))
    w = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if w < 1 or not 0 <= r < w:
        raise UserError(f"--rank {r} is not in 0..{w - 1} for --world_size {w}")
    return r, w


def local_device(device: str, world_size: int) -> str:
    """Under a launcher with several GPUs, rank k of a node uses cuda:LOCAL_RANK."""
    if world_size > 1 and device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def assign(keys: Sequence[Hashable], cost: Callable[[Hashable], float], world_size: int) -> list[list]:
    """Split keys into ``world_size`` shards balanced by cost; each shard in the input order."""
    load = [0.0] * world_size
    owner = [0] * len(keys)
    for i in sorted(range(len(keys)), key=lambda i: (-cost(keys[i]), i)):
        r = min(range(world_size), key=lambda j: (load[j], j))
        owner[i] = r
        load[r] += cost(keys[i])
    return [[k for k, o in zip(keys, owner) if o == r] for r in range(world_size)]


def shard_suffix(rank: int, world_size: int) -> str:
    return "" if world_size == 1 else f".shard{rank}-of-{world_size}"
