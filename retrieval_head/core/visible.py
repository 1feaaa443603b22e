"""Which keys a query row may see once some are hidden from some heads, written once, and the
hook that applies it: streamed heads (``stream.StreamHeads``) and a press's keep sets
(``pressing.PressHeads``) are both this rule and this hook.

``sees_compressed`` is the rule of a cache compressed once at ``at`` (per batch row): a row
at position ``p < at`` was computed before the compression and sees every key; a row from
``at`` on sees, among the keys before ``at``, only the kept ones of its head, and every key
from ``at`` on. A streamed head's kept keys are its sink and its last ``recent`` keys
before ``at`` (``stream.stream_keep``); a press's are what ``press.keep`` chose.

``HidesKeys`` applies a rule (its subclass says which heads it touches and what each of
their rows sees): a decode step is computed whole with the other keys hidden
(``attend.decode_step``), a multi-token call has the rows concerned recomputed for the heads
concerned (``attend.attend_grouped`` or ``attend.attend_heads``). Causal order, the layer's
window and the backend's own mask (padding) stay as the backend has them.

    >>> kept = torch.tensor([True, False, True, False, False, False])  # of the 4 keys before at = 4
    >>> sees_compressed(torch.tensor([3, 5]), torch.arange(6), torch.tensor([4]), kept)[0, 0].int().tolist()
    [[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1]]
"""

from __future__ import annotations

import torch

from .attend import Call, as_allowed, attend_grouped, attend_heads, backend_mask, blocked_by_position, key_columns
from .hook import Hook


def sees_compressed(qpos: torch.Tensor, kpos: torch.Tensor, at: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """bool ``[b, n, r, T]``: the keys ``kpos [T]`` (or ``[b, T]``) the query rows ``qpos [r]``
    see once each batch row's cache was compressed at ``at`` (long ``[b]``, or ``[1]`` for
    all) keeping ``kept``: bool over the key columns, broadcastable to ``[b, n, 1, T]`` (n:
    1, or per head), read only before ``at``. Causal order and the window are not in it
    (``attend.blocked_by_position``)."""
    q, k = qpos[:, None], key_columns(kpos)
    at = at.reshape(-1, 1, 1, 1)
    return (q < at) | (k >= at) | kept


def rows_from(call: Call, at: int) -> int | None:
    """The first of the call's query rows at position ``at`` or later (None: none), from its
    shapes (its queries are its last keys, ``attend.Call``).

    >>> c = Call(0, torch.zeros(1, 1, 3, 1), torch.zeros(1, 1, 10, 1), None, None, None)  # rows 7, 8, 9
    >>> rows_from(c, 8), rows_from(c, 2), rows_from(c, 10)
    (1, 0, None)
    """
    q = call.query.shape[2]
    first = at - (call.key.shape[2] - q)
    return None if first >= q else max(first, 0)


class HidesKeys(Hook):
    """A hook that hides keys from some heads; a subclass says which heads (``touched``),
    what their rows see (``sees``) and from which row of a call on (``first_row``).

    decode_only: act on decode steps only (a phase-``decode`` stream mask: the prefill is
    left whole whatever its rows)."""

    decode_only = False

    def touched(self, call: Call) -> torch.Tensor:
        """bool ``[b or 1, H]``: the heads whose keys the rule restricts in this layer."""
        raise NotImplementedError

    def sees(self, call: Call, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """bool ``[b or 1, 1 or H, r, T]``: the keys each row of those heads may see."""
        raise NotImplementedError

    def first_row(self, call: Call) -> int | None:
        """The first of the call's rows that any batch row restricts (None: none); from the
        shapes and host-side numbers only (asked at every decode step: no device sync)."""
        return 0

    def computes(self, call: Call) -> bool:
        return call.is_decode and self.first_row(call) is not None

    def hides(self, call: Call) -> torch.Tensor | None:
        if self.first_row(call) is None:
            return None  # another hook has the step computed; this rule hides nothing in it
        heads = self.touched(call)  # [b or 1, H]
        return heads[:, :, None, None] & ~self.sees(call, call.qpos(), call.kpos())

    def output(self, call: Call, out: torch.Tensor) -> torch.Tensor:
        """A multi-token call: the rows from ``first_row`` on recomputed for the touched heads."""
        if call.is_decode or self.decode_only:
            return out  # a decode step was computed whole, its hidden keys hidden
        first = self.first_row(call)
        heads = self.touched(call)
        idx = heads.any(0).nonzero().flatten()
        if first is None or len(idx) == 0:
            return out
        rows = call.replace(query=call.query[:, :, first:])  # the last rows: their positions stay right
        qpos, kpos = call.qpos()[first:], call.kpos()
        allowed = ~blocked_by_position(qpos, kpos, call.window) & self.sees(call, qpos, kpos)
        m = backend_mask(call.mask, slice(-len(qpos), None), len(kpos))
        if m is not None:
            allowed = allowed & as_allowed(m)
        if len(idx) == heads.shape[1]:  # every head: the keys read as cached, never copied per head
            o = attend_grouped(rows, allowed)
        else:
            o = attend_heads(rows, idx, allowed if allowed.shape[1] == 1 else allowed[:, idx])
        sel = heads[:, idx].reshape(heads.shape[0], 1, len(idx), 1)
        out = out.clone()
        out[:, first:, idx] = torch.where(sel, o.to(out.dtype), out[:, first:, idx])  # o: [b, r, n, d]
        return out
