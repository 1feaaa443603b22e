"""A pressed KV cache: each KV head of each row really holds only the keys a press keeps, so
the heads of one layer hold different numbers of keys.

``PressedCache(shape, press, budget, phase)`` is a transformers ``Cache``. Until a layer
reaches its compression point ``at`` it holds every key (a ``kvcache.GrowingLayer``) and runs
its attention calls through the press's own masked simulation (``pressing.PressHeads``, the
hook's only instance: ``headwise_attend.pressed_output``), so the call covering ``at - 1``
shows the press that layer's ``seen.Seen`` (its keys and values before ``at``, the last
``press.window`` queries before it, held across a chunked prefill) and the question's rows of
that call (phase ``context``) see the compressed context, exactly as in the simulation. Right
after that call the layer drops every key the press did not keep (``compress``); from then on
every new key is appended to every head (each grows by one per step) and its calls run over
what it holds (``headwise_attend.pressed_output``: one ``attend.attend_grouped`` per group of
heads, the held keys' positions giving causal order, the window and the backend's padding
mask). The phases are kvpress's: ``decode`` (a press) compresses the prompt's cache after its
prefill (``compress_at``, which ``headwise_generate`` tells it; untold, at the end of the first
call); ``context`` (its pipeline) at ``context_length`` (an int, or long ``[b]``: per row),
the question after it appended whole. Left padding (``pad_left``): pads are never kept nor
counted (``Seen.start``), so each row compresses as it would alone.

Storage: a layer's KV heads are split into at most ``groups`` groups by the keys their longest
row keeps (``keep.length_groups``: the fewest groups within 1/16 of the fewest slots), each
group one tensor ``[b, n, P + t, d]`` padded to its longest row and head, with the kept keys'
positions ``pos [b, n, P]`` and ``valid [b, n, P]`` (False: a padding slot, never seen), then
the ``t`` keys written since the compression. Why (``bench/pressed_storage.py``, SmolLM2-135M
shape, 2K and 8K tokens, AdaKV and HeadKV at 10 % and 25 %; docs/compression.md has the
tables): one tensor per layer padded to its longest head holds 1.03-1.08x the keys kept under
AdaKV on random keys but 1.16-1.37x on the real model's keys, and 1.62-2.07x under HeadKV,
whose best-scored heads keep several times the others' keys; the groups hold 1.01-1.03x in
every case, for one attention call per group (1.0-1.8 groups a layer; whole-model decode
steps as fast as one padded tensor's). A flattened layout (each row and head a run of keys at
an offset) holds exactly the keys kept but needs a variable-length kernel: through the
attention functions of ``core/attend.py`` (the one softmax) it must be gathered back into
padded tensors at every step, which doubled the attention's time (1.6-3x). ``keep.pressed_bytes``
predicts the bytes held exactly, padding included; a layer whose press keeps every real key
stays a plain cache (bit for bit a plain cache). Not dropped: keys a sliding layer's window no
longer shows (the press's keep set is what is held, as kvpress keeps it).

What a compressed prefix cannot do (crop back, beam reorder, row selection, offloading) is
refused with a ``UserError`` (``cachebase``). Worked example (SnapKV at 25 %)::

    cache = PressedCache(shape, SnapKV(), 0.25, phase="decode")
    out = headwise_generate(model, cache, input_ids=ids, attention_mask=am, max_new_tokens=32)
    cache.nbytes() == pressed_bytes(cache.kept(), cache.get_seq_length(), shape.head_dim, 2, start)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..models.shape import ModelShape
from .cachebase import CompressedCache, CompressedLayer, check_rows, refused_by_backends
from .headwise import query_heads
from .keep import PRESSED_GROUPS, drops_keys, length_groups, row_slots
from .kvcache import GrowingLayer, Growth
from .pressing import PressHeads
from .seen import Press


@refused_by_backends
@dataclass
class PressedKV:
    """What a pressed layer's update returns for keys (or values) while its attention is not
    the backend's: ``parts`` is ``[every key]`` before the compression, after it one tensor
    per group of KV heads (``layer.groups``)."""

    parts: list[torch.Tensor]
    layer: "PressedLayer"


@dataclass
class Group:
    """KV heads ``heads`` of a compressed layer, held as one tensor (``store``, ``[b, n, P +
    t, d]``): P slots of the compressed keys at positions ``pos [b, n, P]`` (``valid``: a
    kept key; False: a slot padding its row and head to the group's longest), then every key
    written since the compression. ``q_heads``: the query heads they serve, grouped."""

    heads: torch.Tensor
    q_heads: torch.Tensor
    store: GrowingLayer
    pos: torch.Tensor
    valid: torch.Tensor


class PressedLayer(CompressedLayer):
    """One layer: every key (``plain``) until compressed, then its ``groups``; ``since``: the
    length at the compression (the first position of the keys written after it)."""

    kind = "pressed"

    def __init__(self, index: int, press: Press, shares: list[float], phase: str, context_length,
                 reserve: int, group: int, most: int):
        super().__init__()
        self.index, self.press, self.shares, self.phase = index, press, shares, phase
        self.reserve, self.group, self.most = reserve, group, most
        self.at = context_length if phase == "context" else None  # decode: set by compress_at or the first update
        self.start = None  # long [b]: each row's first real position (pad_left)
        self.fresh()

    def fresh(self) -> None:
        self.plain = GrowingLayer(Growth(self.reserve))
        self.simulation: PressHeads | None = None  # the press's keep sets, made at the first update
        self.groups: list[Group] | None = None
        self.since, self.length, self.is_initialized = None, 0, False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        check_rows(self, key_states.shape[0])
        self.length += key_states.shape[-2]
        if self.groups is not None:
            return self.append(key_states, value_states)
        if self.simulation is None:
            at = self.length if self.at is None else self.at  # untold (decode): the first call is the prefill
            self.simulation = PressHeads(self.press, self.shares, at, self.start)
        keys, values = self.plain.update(key_states, value_states)
        if self.simulation.compressed(self.index):
            return keys, values  # compressed, every real key kept: a plain layer, the backend's
        return PressedKV([keys], self), PressedKV([values], self)

    def compress(self) -> None:
        """Drop every key the press did not keep (after the call that compressed the layer at
        its last point); a layer that keeps every real key stays as it is."""
        kept = self.simulation.kept[self.index]  # [b, kv, A]; every key from A on is held
        if not drops_keys(kept, self.start):
            return
        keys, values = self.plain.keys, self.plain.values
        b, kv, n, _ = keys.shape
        held = torch.cat([kept, kept.new_ones(b, kv, n - kept.shape[-1])], dim=-1)
        longest = kept.sum(-1).amax(0).tolist()
        self.groups = [self.hold(torch.tensor(g, device=keys.device), held, keys, values)
                       for g in length_groups(longest, self.most)]
        self.plain, self.since = None, n

    def hold(self, heads: torch.Tensor, held: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> Group:
        """The group of KV heads ``heads``: each row and head its ``held`` keys (bool ``[b, kv,
        n]``), padded to the group's longest with its earliest other keys (never seen)."""
        every = len(heads) == keys.shape[1]
        h = held if every else held[:, heads]
        b, g, n = h.shape
        pos = row_slots(h.reshape(b * g, n)).reshape(b, g, -1)  # [b, g, P]
        idx = pos[..., None].expand(-1, -1, -1, keys.shape[-1])
        store = GrowingLayer(Growth(self.reserve))
        if pos.shape[-1]:  # (a group whose heads keep no key starts empty: the next call's keys)
            store.update((keys if every else keys[:, heads]).gather(2, idx),
                         (values if every else values[:, heads]).gather(2, idx))
        return Group(heads, query_heads(heads, self.group), store, pos, h.gather(2, pos))

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Every head grows by the call's keys (written in place); the groups' tensors, wrapped."""
        keys, values = [], []
        for g in self.groups:
            every = len(g.heads) == key_states.shape[1]
            k, v = g.store.update(key_states if every else key_states[:, g.heads],
                                  value_states if every else value_states[:, g.heads])
            keys.append(k)
            values.append(v)
        return PressedKV(keys, self), PressedKV(values, self)

    def tensors(self) -> list[torch.Tensor]:
        """The keys and values held (filled parts)."""
        stores = [self.plain] if self.groups is None else [g.store for g in self.groups]
        return [t for s in stores if s.keys is not None for t in (s.keys, s.values)]

    def reset(self) -> None:
        self.fresh()
        self.at = self.at if self.phase == "context" else None


class PressedCache(CompressedCache):
    """A KV cache compressed once by ``press`` at ``budget`` (the part of the cache kept,
    ``press.layer_shares``), as ``phase`` says (``decode``; ``context`` with
    ``context_length``); ``groups``: the most tensors a layer's KV heads are held in;
    ``reserve``: spare tokens of each tensor's buffer."""

    kind = "pressed"

    def __init__(self, shape: ModelShape, press: Press, budget: float, phase: str = "decode",
                 context_length: int | torch.Tensor | None = None, reserve: int = 64, groups: int = PRESSED_GROUPS):
        if phase not in ("decode", "context"):
            raise UserError(f"a press compresses the cache once: phase decode or context, not {phase!r} "
                            "(phase all is for streaming heads: HeadwiseCache)")
        if (phase == "context") != (context_length is not None):
            raise UserError("phase context needs context_length (and only it takes one)")
        if groups < 1:
            raise UserError(f"groups must be at least 1, got {groups}")
        self.shares = [float(s) for s in press.layer_shares(shape, budget)]
        if len(self.shares) != shape.num_layers:
            raise UserError(f"press {press.name!r} gave {len(self.shares)} layer shares for {shape.num_layers} layers")
        self.shape, self.press, self.budget, self.phase, self.most = shape, press, budget, phase, groups
        layers = [PressedLayer(i, press, self.shares, phase, context_length, reserve, shape.group, groups)
                  for i in range(shape.num_layers)]
        super().__init__(layers=layers)

    def absorb(self, prefilled, upto: int) -> "PressedCache":
        """Fill a fresh phase-decode cache, told its point (``compress_at``), with the first
        ``upto`` keys of a plain cache holding the prompt's prefill (``layers[i].keys``/``values``
        ``[b, kv_heads, T, d]``, every key), uncompressed, as if its own prefill had run them
        as a first chunk: run the prompt's tokens from ``upto`` on it (at least the press's
        window of queries before the point, which the press reads) and it compresses at the
        point as its own prefill would. ``prefilled`` is left as it was."""
        if self.phase != "decode" or self.get_seq_length() or any(layer.at is None for layer in self.layers):
            raise UserError("absorb is for a fresh phase-decode pressed cache told its point (compress_at)")
        at = self.layers[0].at
        last = at - min(max(1, self.press.window), at)  # the window clamped to the prompt, as the press reads it
        if upto > last:
            raise UserError(f"absorb holds keys before the press's window of queries only (up to {last}), got {upto}")
        for layer, plain in zip(self.layers, prefilled.layers):
            if plain.keys.shape[-2] < upto:
                raise UserError("absorb takes a cache holding every key (not a sliding-window layer's last ones)")
            if upto:
                layer.lazy_initialization(plain.keys, plain.values)
                layer.plain.update(plain.keys[..., :upto, :], plain.values[..., :upto, :])
                layer.length = upto
        return self

    def kept(self) -> list[torch.Tensor]:
        """Per layer, its keep sets (bool ``[b, kv, A]``, ``PressHeads.kept``): what
        ``keep.pressed_bytes`` predicts the bytes held from."""
        if any(layer.simulation is None or not layer.simulation.compressed(i) for i, layer in enumerate(self.layers)):
            raise UserError("the cache is not compressed yet (its prefill has not reached the compression point)")
        return [layer.simulation.kept[i] for i, layer in enumerate(self.layers)]

    def allocated(self) -> int:
        """Bytes allocated for keys and values, the spare room of every buffer included."""
        total = 0
        for layer in self.layers:
            for store in [layer.plain] if layer.groups is None else [g.store for g in layer.groups]:
                if store.keys is not None:
                    k = store.keys
                    total += 2 * k.shape[0] * k.shape[1] * store.capacity() * k.shape[-1] * k.element_size()
        return total
