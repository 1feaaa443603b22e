"""Keep sets: which KV heads of a head-wise cache keep every key, and what the cache then holds.

A keep set is a bool ``[layers, kv_heads]`` (True = the KV head keeps its whole cache; False
= it streams: only its sink and recent keys are held, ``stream.stream_keep``). The unit of
memory is the KV head: under GQA a KV head's keys serve ``group`` query heads, so it can be
dropped only as a whole. ``keep_top`` ranks KV heads by the best score among their query
heads (a KV head stays full when any of its query heads retrieves). A keep set of query
heads, bool ``[layers, heads]`` (the masked needle test's unit), holds the same memory as
``stream.full_kv_heads`` of it; its streamed query heads on a full KV head (``mixed_heads``)
see only their sink and recent keys all the same, so the answers are the simulation's.

``stored`` counts what a streamed head holds between calls: exactly the keys the next query
may see (its sink and recent keys, within the layer's window, or every key from the
compression point ``at`` on); ``cache_bytes`` turns a keep set into the bytes a
``headwise.HeadwiseCache`` holds (its tests check it to the byte). A press's keep sets (bool
``[b, kv, A]`` per layer, each row and KV head its own keys) are held by a
``pressed.PressedCache`` in groups of KV heads of similar lengths (``length_groups``);
``pressed_bytes`` predicts its bytes, padding included.

    >>> scores = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.2, 0.3, 0.8, 0.0]])  # [layers, heads], 2 KV heads of 2
    >>> keep_top(scores, group=2, k=2).tolist()
    [[True, False], [False, True]]
    >>> keep_top(scores, group=2, fraction=0.25).int().tolist()
    [[1, 0], [0, 0]]
    >>> stored(100, sink=4, recent=8, window=None, at=None)  # phase all: 4 sink + the 7 keys before the next query
    11
    >>> stored(100, sink=4, recent=8, window=None, at=60)  # compressed at 60: 4 + 8 + the 40 keys from 60 on
    52
    >>> from transformers import LlamaConfig  # 1 layer, query heads 0-1 share KV head 0, 2-3 KV head 1
    >>> shape = ModelShape.from_config(LlamaConfig(num_hidden_layers=1, num_attention_heads=4,
    ...                                            num_key_value_heads=2, hidden_size=16))
    >>> kept = torch.tensor([[True, False, False, False]])  # query heads kept: KV head 0 stays full
    >>> full_kv_heads(shape, kept).tolist(), mixed_heads(shape, kept).tolist()
    ([[True, False]], [[False, True, False, False]])
    >>> cache_bytes(shape, kept, 1, 100, 4, 4, 8) == cache_bytes(shape, torch.tensor([[True, False]]), 1, 100, 4, 4, 8)
    True
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..headfiles.ranking import top_order
from ..models.shape import ModelShape
from ..vocabulary import PHASES as KEEP_PHASES  # noqa: F401 (re-exported: the head-wise cache's phases)
from .attend import blocked_by_position
from .stream import full_kv_heads, stream_keep


def keep_count(total: int, k: int | None = None, fraction: float | None = None) -> int:
    """The number of KV heads kept full, from exactly one of ``k`` and ``fraction`` (rounded)."""
    if (k is None) == (fraction is None):
        raise UserError("give exactly one of --keep_full K and --keep_fraction F")
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"--keep_fraction must be between 0 and 1, got {fraction}")
        return round(fraction * total)
    if not 0 <= k <= total:
        raise UserError(f"--keep_full {k}: the model has {total} KV heads (keep between 0 and {total})")
    return k


def keep_top(scores: torch.Tensor, group: int, k: int | None = None, fraction: float | None = None) -> torch.Tensor:
    """bool ``[layers, kv_heads]``: the ``k`` (or ``fraction`` of all) KV heads whose best
    query head scores highest, from query-head ``scores [layers, heads]``, ranked by the
    project's one top-K rule (``ranking.top_order``: ties layer-major)."""
    kv = scores.reshape(scores.shape[0], -1, group).amax(-1)
    n = keep_count(kv.numel(), k, fraction)
    out = torch.zeros(kv.numel(), dtype=torch.bool)
    out[top_order(kv, n)] = True
    return out.reshape(kv.shape)


def stored_positions(pos: torch.Tensor, length: int, sink: int, recent: int, window: int | None,
                     at: int | None, start: torch.Tensor | None = None) -> torch.Tensor:
    """bool over ``pos`` (long ``[S]``, positions held; or ``[b, S]``, per row): the keys a
    streamed head still needs once ``length`` keys are cached, i.e. those the next query (at
    ``length``) sees. ``start`` (long ``[b]``, each row's first real position; left padding):
    ``[b, S]``."""
    nxt = torch.tensor([length], device=pos.device)
    at_t = None if at is None else torch.tensor([at], device=pos.device)
    keep = stream_keep(nxt, pos, sink, recent, at_t, start) & ~blocked_by_position(nxt, pos, window)
    return keep.reshape(-1) if pos.ndim == 1 and start is None else keep.reshape(-1, pos.shape[-1])


def row_slots(keep: torch.Tensor) -> torch.Tensor:
    """long ``[b, S]``: per row, the indices of the positions it keeps (``keep``: bool ``[b,
    P]``), made as many as the most any row keeps with the row's earliest other positions:
    keys the rule hides from it for good (its pads, keys before its window), so a row holds
    them without seeing them and the rows stack into one tensor.

    >>> row_slots(torch.tensor([[True, False, True, True], [False, False, True, True]])).tolist()
    [[0, 2, 3], [0, 2, 3]]
    """
    need = keep.sum(-1, keepdim=True)  # [b, 1]
    others = ~keep
    sel = keep | (others & (others.cumsum(-1) <= need.max() - need))
    return sel.nonzero()[:, 1].reshape(keep.shape[0], -1)


def stored(length: int, sink: int, recent: int, window: int | None, at: int | None,
           start: torch.Tensor | None = None) -> int:
    """The keys a streamed head holds per row between calls once ``length`` keys are cached
    (``start``, left padding: the most any row needs, ``row_slots``)."""
    start = None if start is None else start.cpu()  # a count: computed on the CPU
    keep = stored_positions(torch.arange(length), length, sink, recent, window, at, start)
    return int(keep.reshape(-1, length).sum(-1).max())


def cache_bytes(shape: ModelShape, keep: torch.Tensor | None, batch: int, length: int, itemsize: int, sink: int = 0,
                recent: int = 1, at: int | None = None, start: torch.Tensor | None = None) -> int:
    """Bytes of keys and values a head-wise cache holds at ``length`` tokens (``keep``: KV or
    query heads, ``check_keep``; None: every head full, a plain cache that keeps every key).
    ``at``: the compression point (phase decode: the prompt's length; context: the
    context's), None for phase all. ``start``: each row's first real position under left
    padding (None: no padding)."""
    per_key = 2 * batch * shape.head_dim * itemsize  # a key and a value
    keep = None if keep is None else full_kv_heads(shape, keep)  # query heads: what their KV heads hold
    total = 0
    for layer, window in enumerate(shape.windows):
        n_full = shape.num_kv_heads if keep is None else int(keep[layer].sum())
        n_stream = shape.num_kv_heads - n_full
        streamed = stored(length, sink, recent, window, at, start) if n_stream else 0
        total += per_key * (n_full * length + n_stream * streamed)
    return total


PRESSED_GROUPS = 4  # the most tensors a pressed layer's KV heads are held in (``pressed``: why)
PRESSED_SLACK = 1 / 16  # and the slots a split into fewer tensors may hold beyond the fewest


def drops_keys(kept: torch.Tensor, start: torch.Tensor | None = None) -> bool:
    """Whether keep sets ``kept`` (bool ``[b, kv, A]``, one layer's) drop any real key (one
    at or after its row's ``start``, long ``[b]``; pads are never kept)."""
    pads = torch.arange(kept.shape[-1], device=kept.device)[None, :] < (
        0 if start is None else start.to(kept.device)[:, None])
    return not bool((kept | pads[:, None, :]).all())


def length_groups(lengths: list[int], most: int, slack: float = PRESSED_SLACK) -> list[list[int]]:
    """KV heads grouped for a pressed layer's storage: each group is one tensor padded to its
    longest head, a group's slots ``len(g) * max(lengths[g])``. Of the splits into at most
    ``most`` groups (each a run of the heads sorted by length), the fewest groups whose slots
    are within ``slack`` of the fewest any split holds. ``lengths``: per KV head, the keys its
    longest row keeps. Groups longest first, heads in order within each.

    >>> length_groups([10, 200, 12, 190], 2), length_groups([10, 200, 12, 190], 1)
    ([[1, 3], [0, 2]], [[0, 1, 2, 3]])
    >>> length_groups([100, 104, 98], 3)  # one tensor holds 312 slots, 3 groups 302: within 1/16
    [[0, 1, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda h: (-lengths[h], h))
    n, inf = len(order), float("inf")
    # best[g][i]: the fewest slots holding the i longest heads in g groups (a group: a run of the order)
    best = [[0.0] + [inf] * n] + [[inf] * (n + 1) for _ in range(most)]
    cut = [[0] * (n + 1) for _ in range(most + 1)]
    for g in range(1, most + 1):
        for i in range(1, n + 1):
            for j in range(i):  # the last group: order[j:i], as long as its first head
                cost = best[g - 1][j] + (i - j) * lengths[order[j]]
                if cost < best[g][i]:
                    best[g][i], cut[g][i] = cost, j
    fewest = min(best[g][n] for g in range(1, most + 1))
    g = next(g for g in range(1, most + 1) if best[g][n] <= fewest * (1 + slack))
    groups, i = [], n
    while i:
        j = cut[g][i]
        groups.append(sorted(order[j:i]))
        i, g = j, g - 1
    return groups[::-1]


def pressed_bytes(kept: list[torch.Tensor], length: int, head_dim: int, itemsize: int,
                  start: torch.Tensor | None = None, most: int = PRESSED_GROUPS) -> int:
    """Bytes of keys and values a ``pressed.PressedCache`` holds at ``length`` tokens, padding
    included, from its keep sets ``kept``: per layer bool ``[b, kv, A]`` (``PressHeads.kept``:
    the keys before ``A`` each KV head of each row holds; every key from ``A`` on is held).
    A layer that drops no real key (``drops_keys``) stays a plain cache (pads included); the
    others hold each group of KV heads (``length_groups``, at most ``most``) padded to its
    longest row and head, plus every key written after the compression."""
    total = 0
    for layer in kept:
        b, kv, a = layer.shape
        if not drops_keys(layer, start):
            slots = kv * length
        else:
            longest = layer.sum(-1).amax(0).tolist()  # per KV head, its longest row
            slots = sum(len(g) * (max(longest[h] for h in g) + length - a) for g in length_groups(longest, most))
        total += 2 * b * slots * head_dim * itemsize
    return total


def mixed_heads(shape: ModelShape, keep: torch.Tensor) -> torch.Tensor:
    """bool ``[layers, heads]``: the query heads a keep set streams although their KV head
    stays full (a keep set of query heads whose KV head serves kept and streamed ones; none
    for a keep set of KV heads). Their keys are held anyway; what they may see is the
    streaming rule's (``stream.stream_keep``), as in the masked simulation."""
    if keep.shape[-1] != shape.num_heads or shape.group == 1:
        return torch.zeros(shape.num_layers, shape.num_heads, dtype=torch.bool, device=keep.device)
    return full_kv_heads(shape, keep).repeat_interleave(shape.group, dim=1) & ~keep


def check_keep(keep: torch.Tensor, shape: ModelShape) -> None:
    """Refuse a keep set made for another model: bool ``[layers, kv_heads]`` or, of query
    heads, ``[layers, heads]``."""
    sizes = (shape.num_kv_heads, shape.num_heads)
    if keep.dtype != torch.bool or keep.ndim != 2 or keep.shape[0] != shape.num_layers or keep.shape[1] not in sizes:
        raise UserError(f"a keep set is a bool [layers, kv_heads] = {[shape.num_layers, shape.num_kv_heads]} "
                        f"or [layers, heads] = {[shape.num_layers, shape.num_heads]} tensor, "
                        f"got {keep.dtype} {list(keep.shape)}")
