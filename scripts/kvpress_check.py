"""kvpress's presses and ours on the same random keys and queries: do they keep the same keys?

Not a test and not a dependency (kvpress is not installed in CI): run it in a throwaway venv::

    python3 -m venv /tmp/kvpress && /tmp/kvpress/bin/pip install torch==2.13.0 \\
        && /tmp/kvpress/bin/pip install kvpress 'transformers==5.2.0'
    PYTHONPATH=. /tmp/kvpress/bin/python scripts/kvpress_check.py

kvpress 0.5.5 reads a layer through its module (``q_proj``, the rotary embedding); a stand-in
module whose ``q_proj`` is the identity and whose rotation is cos 1, sin 0 hands it our queries as
they are (already rotated), so both sides score the same ``[b, kv, n, d]`` keys and ``[b, h, w,
d]`` queries at scale ``d^-1/2``. At a compression ratio ``r`` kvpress keeps ``int(n (1 - r))``
keys a head; ours is given the share that keeps the same (``n_kept / n``; each row then keeps
``kv x n_kept``). Compared: SnapKV's scores (the keys before the window) and the kept sets of
StreamingLLM, Knorm, SnapKV, PyramidKV (a pyramid with no cap or fall-back: integer layer
budgets) and AdaKV (over SnapKV and over Knorm). DuoAttention is left out: kvpress's press
downloads its head pattern (or scores heads on a data set) and cannot run offline.
"""

from __future__ import annotations

import types

import torch
from kvpress import AdaKVPress, KnormPress, PyramidKVPress, SnapKVPress, StreamingLLMPress

from retrieval_head.core.seen import Seen
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.adakv import AdaKV
from retrieval_head.presses.knorm import Knorm
from retrieval_head.presses.pyramidkv import PyramidKV
from retrieval_head.presses.snapkv import SnapKV
from retrieval_head.presses.streaming_llm import StreamingLLM

B, H, KV, D, N, LAYERS = 2, 8, 2, 16, 512, 4


def module(layer: int):
    """What kvpress reads of an attention module: config, head_dim, layer_idx and q_proj."""
    q_proj = torch.nn.Linear(H * D, H * D, bias=False)
    torch.nn.init.eye_(q_proj.weight)
    config = types.SimpleNamespace(num_attention_heads=H, num_key_value_heads=KV, num_hidden_layers=LAYERS,
                                   _attn_implementation="sdpa")
    return types.SimpleNamespace(config=config, head_dim=D, layer_idx=layer, q_proj=q_proj)


def inputs(seed: int, window: int):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(B, KV, N, D, generator=g)
    queries = torch.randn(B, H, window, D, generator=g)
    hidden = torch.zeros(B, N, H * D)
    hidden[:, N - window:] = queries.transpose(1, 2).reshape(B, window, H * D)
    rope = (torch.ones(B, N, D), torch.zeros(B, N, D))
    return keys, queries, hidden, {"position_embeddings": rope}


def kv_kept(scores: torch.Tensor, n_kept: int) -> torch.Tensor:
    """kvpress's ScorerPress.compress: each head's top ``n_kept`` scores, as a bool mask."""
    kept = torch.zeros_like(scores, dtype=torch.bool)
    return kept.scatter_(-1, scores.topk(n_kept, dim=-1).indices, True)


def compare(label: str, theirs: torch.Tensor, ours: torch.Tensor) -> bool:
    differ = (theirs != ours).sum().item()
    same = bool(differ == 0)
    print(f"{label:44s} kept {int(ours.sum()):6d} / {int(theirs.sum()):6d}   keys differing {differ:4d}   "
          f"{'same' if same else 'DIFFERENT'}")
    return same


def check(seed: int, ratio: float, window: int = 64) -> list[bool]:
    keys, queries, hidden, kwargs = inputs(seed, window)
    n_kept = int(N * (1 - ratio))
    share = n_kept / N
    seen = Seen(1, keys, keys, queries, D ** -0.5, torch.zeros(B, dtype=torch.long))
    m = module(1)
    out = []
    snap = SnapKVPress(compression_ratio=ratio, window_size=window, kernel_size=5)
    theirs = snap.score(m, hidden, keys, keys, None, kwargs)
    ours = SnapKV(window=window, kernel=5).scores(seen)
    diff = (theirs[..., :-window] - ours[..., :-window]).abs().max().item()
    print(f"seed {seed} ratio {ratio}: SnapKV scores before the window, max |kvpress - ours| = {diff:.2e}")
    out.append(compare("  snapkv", kv_kept(theirs, n_kept), SnapKV(window=window).keep(seen, share)))
    knorm = KnormPress(compression_ratio=ratio).score(m, hidden, keys, keys, None, kwargs)
    out.append(compare("  knorm", kv_kept(knorm, n_kept), Knorm().keep(seen, share)))
    stream = StreamingLLMPress(compression_ratio=ratio, n_sink=4).score(m, hidden, keys, keys, None, kwargs)
    out.append(compare("  streaming_llm", kv_kept(stream, n_kept), StreamingLLM(sink=4).keep(seen, share)))
    for scorer, ours_scorer in ((SnapKVPress(window_size=window), SnapKV(window=window)), (KnormPress(), Knorm())):
        ada = AdaKVPress(press=scorer, alpha_safeguard=0.2)
        ada.compression_ratio = ratio
        ada.compress(m, hidden, keys, keys, None, kwargs)
        pruned = torch.zeros(B, KV, N, dtype=torch.bool)
        pruned[m.masked_key_indices] = True
        out.append(compare(f"  adakv({ours_scorer.name})", ~pruned, AdaKV(ours_scorer, alpha=0.2).keep(seen, share)))
    return out


def check_pyramid(seed: int, budget: float = 0.25, beta: float = 4, window: int = 8) -> list[bool]:
    """kvpress's layer budgets ``round(max - l * step)`` keys a head; ours: shares x n (integer here)."""
    keys, queries, hidden, kwargs = inputs(seed, window)
    press = PyramidKVPress(compression_ratio=1 - budget, window_size=window, beta=beta)
    shares = PyramidKV(window=window, beta=beta).layer_shares(ModelShape(LAYERS, H, KV, D, None, (None,) * LAYERS),
                                                              budget)
    print(f"seed {seed} PyramidKV budget {budget} beta {beta}: kvpress keys a head per layer "
          f"{[press.get_layer_budget(module(layer), N) for layer in range(LAYERS)]}, ours "
          f"{[round(s * N, 6) for s in shares]}")
    out = []
    for layer in range(LAYERS):
        m = module(layer)
        theirs = kv_kept(press.score(m, hidden, keys, keys, None, kwargs), press.get_layer_budget(m, N))
        seen = Seen(layer, keys, keys, queries, D ** -0.5, torch.zeros(B, dtype=torch.long))
        out.append(compare(f"  pyramidkv layer {layer}", theirs, PyramidKV(window=window, beta=beta).keep(seen,
                                                                                                        shares[layer])))
    return out


def main() -> None:
    torch.set_num_threads(1)
    results = []
    for seed in range(3):
        for ratio in (0.5, 0.8):
            results += check(seed, ratio)
        results += check_pyramid(seed)
    print(f"{sum(results)} of {len(results)} comparisons keep the same keys")


if __name__ == "__main__":
    main()
