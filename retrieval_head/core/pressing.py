"""The masked simulation of a press (``seen.Press``): each layer's cache compressed once at
``at`` to the keys the press keeps, simulated on a cache that keeps every key.

``PressHeads`` is the hook. At the attention call of a layer that covers position ``at - 1``
(the prefill's last chunk, or the whole prefill) it shows the press that layer as a
``seen.Seen`` (the cache's keys and values before ``at``, the last ``press.window`` queries
before ``at``) and stores the keep set the press answers, bool ``[b, kv, at]``. From then on
every query row at ``at`` or later sees, among the keys before ``at``, only the kept ones of
its KV head, and every key from ``at`` on (``visible.sees_compressed``, the rule the
streamed heads follow too); rows before ``at`` were computed before the compression and see
every key. Causal order, sliding windows and padding are the backend's, as for every
``visible.HidesKeys`` hook.

The phases are where ``at`` is: ``decode`` (kvpress's presses) the prompt's length, the
prompt's cache compressed after its prefill; ``context`` (kvpress's pipeline) the context's
length, the question after it appended whole (its rows, in the same prefill, see the
compressed context). Phase ``all`` (compressed from the first token) is not a token press's:
only streaming heads do it (``stream.StreamHeads``).

The cache is never cut, so it must keep every key where the hook reads positions from it:
``model.generate(..., cache=GrowingCache())`` (a sliding layer of transformers' own cache
keeps only its window, and is refused at its first decode step). Worked example::

    hook = PressHeads(press, press.layer_shares(shape, 0.25), at=prompt_length)
    with intervene(model, hooks=[hook]):
        model.generate(input_ids, cache=GrowingCache(), max_new_tokens=20)

A row's compression point may differ per batch row (``at`` long ``[b]``: left-padded rows
whose questions differ in length); the press is then asked once per distinct point, for the
rows that share it. ``compress(at, start)`` starts the next prompt in the same scope.

``KeptKeys`` applies keep sets already chosen (``PressHeads`` is one that chooses its own as
the prompt runs): the scheduler asks each press once per prompt, then decodes rows of several
prompts and presses as one batch, each row with its own keep sets.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models.shape import ModelShape
from .attend import Call
from .hook import OnDevice
from .keep import drops_keys
from .seen import Press, Seen
from .visible import HidesKeys, rows_from, sees_compressed


class KeptKeys(HidesKeys):
    """Every KV head sees, from ``at`` on, only the keys before ``at`` its keep set holds: keep
    sets already chosen (``PressHeads`` chooses them as the prompt runs). The scheduler decodes
    rows of several prompts under several presses as one batch with one of these.

    kept: per layer, bool ``[b, kv, A]`` (A >= every row's ``at``; columns from a row's ``at``
        on are not read); at: per batch row (long ``[b]``, or an int for all).
    """

    def __init__(self, kept: dict[int, torch.Tensor], at: torch.Tensor | int):
        self.every_head = OnDevice(lambda h, dev: torch.ones(1, h, dtype=torch.bool, device=dev))
        self.kept = kept
        self._point(at)

    def _point(self, at: torch.Tensor | int) -> None:
        self.at = torch.as_tensor(at, dtype=torch.long).reshape(-1)
        self.points = sorted(set(self.at.tolist()))  # host-side: the calls that compress, found from shapes
        self.at_on = OnDevice(lambda _, dev: self.at.to(dev))

    def touched(self, call: Call) -> torch.Tensor:
        return self.every_head.get(call.query.shape[1], call.query.device)  # a press restricts every head

    def first_row(self, call: Call) -> int | None:
        return rows_from(call, self.points[0])

    def sees(self, call: Call, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        self._check_compressed(call)
        kept = self.kept[call.layer]  # [b, kv, A]
        b, kv, n = kept.shape
        cols = torch.cat([kept, kept.new_zeros(b, kv, len(kpos) - n)], dim=-1)  # keys from A on: the rule's
        cols = cols.repeat_interleave(call.query.shape[1] // kv, dim=1)[:, :, None, :]  # [b, H, 1, T]
        return sees_compressed(qpos, kpos, self.at_on.get(None, kpos.device), cols)

    def _check_compressed(self, call: Call) -> None:
        if call.layer not in self.kept:
            raise RuntimeError(f"layer {call.layer} has no keep set")


class PressHeads(KeptKeys):
    """Every KV head sees, from ``at`` on, only the keys before ``at`` that ``press`` keeps.

    shares: per layer, the share of its keys it keeps (``press.layer_shares(shape, budget)``).
    at: per batch row (long ``[b]``, or an int for all), where its cache is compressed.
    start: per batch row (long ``[b]``), its first real position (left padding: the press
        never keeps nor counts the pads); None: every row starts at 0.
    """

    def __init__(self, press: Press, shares: Sequence[float], at: torch.Tensor | int,
                 start: torch.Tensor | None = None):
        self.press, self.shares = press, [float(s) for s in shares]
        super().__init__({}, 0)
        self.compress(at, start)

    def compress(self, at: torch.Tensor | int, start: torch.Tensor | None = None) -> None:
        """Where each batch row's cache is compressed (the next prompt), and where its tokens
        start; every keep set and query held for the last prompt is dropped."""
        if at is None:
            raise ValueError(f"press {self.press.name!r} compresses the cache once, at a point it must be told "
                             "(phase decode: the prompt's length; context: the context's); phase all is only "
                             "for streaming heads (HeadMask(heads, 'stream', 'all', sink, recent))")
        self._point(at)
        self.start = None if start is None else torch.as_tensor(start, dtype=torch.long).reshape(-1)
        self.kept: dict[int, torch.Tensor] = {}  # layer -> bool [b, kv, max at], True = kept
        self.done: dict[int, set[int]] = {}  # layer -> the points compressed so far
        self.recent_q: dict[int, torch.Tensor] = {}  # layer -> the last queries [b, H, <= window, d]

    def check(self, shape: ModelShape) -> None:
        if len(self.shares) != shape.num_layers:
            raise ValueError(f"{len(self.shares)} layer shares for a model of {shape.num_layers} layers")

    def output(self, call: Call, out: torch.Tensor) -> torch.Tensor:
        self._observe(call)
        kept = self.kept.get(call.layer)
        if kept is not None and not drops_keys(kept, self.start):
            return out  # every real key kept: the rows from the point on see what the backend gave them
        return super().output(call, out)

    def compressed(self, layer: int) -> bool:
        """Whether ``layer`` was compressed at every point (its keep sets ``kept[layer]`` final)."""
        return len(self.done.get(layer, ())) == len(self.points)

    def _check_compressed(self, call: Call) -> None:
        """Refuse rows past a compression point the layer never reached: the call that covers
        ``at - 1`` ran outside the scope (a prefill before it opened)."""
        last = call.key.shape[2] - 1
        missing = [a for a in self.points if a <= last and a not in self.done.get(call.layer, ())]
        if missing:
            raise RuntimeError(f"layer {call.layer} reaches position {last} but was never compressed at {missing[0]}: "
                               "the call covering the compression point (the prefill) must run inside the scope")

    def _observe(self, call: Call) -> None:
        """Compress the layer for every point the call covers; hold the last queries the
        press may read at a point a later call covers (a chunked prefill)."""
        layer, n, q = call.layer, call.key.shape[2], call.query.shape[2]
        if n - q < max(self.done.get(layer, ()), default=0):
            raise RuntimeError(f"layer {layer} was compressed at {max(self.done[layer])} but this call starts at "
                               f"{n - q}: a new prompt (call compress(at) first), or a cache that drops keys "
                               "(pass cache=GrowingCache(), which keeps every key)")
        pending = [a for a in self.points if a not in self.done.get(layer, ())]
        if not pending:
            return
        held = self.recent_q.get(layer)
        queries = call.query if held is None else torch.cat([held, call.query], dim=2)  # rows ending at n
        for a in pending:
            if n - q <= a - 1 < n:
                self._press(call, a, queries)
        if self.press.window and len(self.done.get(layer, ())) < len(self.points):
            self.recent_q[layer] = queries[:, :, -self.press.window:]
        else:
            self.recent_q.pop(layer, None)

    def _press(self, call: Call, a: int, queries: torch.Tensor) -> None:
        """Ask the press which keys before ``a`` the rows compressed there keep."""
        layer, n = call.layer, call.key.shape[2]
        rows = (self.at == a).nonzero().flatten() if len(self.at) > 1 else torch.arange(call.key.shape[0])
        rows = rows.to(call.key.device)
        w = min(self.press.window, a)
        end = queries.shape[2] - (n - a)  # the row of position a - 1 is end - 1
        start = torch.zeros(call.key.shape[0], dtype=torch.long) if self.start is None else self.start
        seen = Seen(layer, call.key[rows, :, :a], call.value[rows, :, :a], queries[rows, :, end - w:end],
                    call.scale, start.to(call.key.device)[rows])
        keep = self.press.keep(seen, self.shares[layer])
        want = (len(rows), call.key.shape[1], a)
        if keep.dtype != torch.bool or tuple(keep.shape) != want:
            raise ValueError(f"press {self.press.name!r} answered {keep.dtype} {list(keep.shape)}, "
                             f"not bool {list(want)} [rows, kv_heads, keys]")
        if layer not in self.kept:
            self.kept[layer] = keep.new_ones(call.key.shape[0], call.key.shape[1], max(self.points))
        self.kept[layer][rows, :, :a] = keep
        self.done.setdefault(layer, set()).add(a)
