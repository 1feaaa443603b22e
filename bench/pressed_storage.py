"""How a pressed cache should hold heads of different lengths: bytes held and decode-step time
of the layouts, on SmolLM2-135M-shaped random data (30 layers, 9 query heads on 3 KV heads,
head_dim 64, float32 on CPU; random weights: a decode step's cost depends on shapes, not
values).

For each length x press x budget, each layer's keep sets come from the press itself, asked on
random keys, values and window queries (``seen.Seen``): AdaKV (over SnapKV) and HeadKV (the
shipped SmolLM2 retrieval scores per KV head, ``head_score/SmolLM2-135M-Instruct.kv_max.json``).
The layouts, each filled with the same keys:

- ``exact``: what a flattened layout (every row and head its run of keys at an offset) holds:
  the keys kept, nothing more. Attending over it through ``attend.attend_grouped`` needs the
  runs back in padded tensors: ``flat attn ms`` times that gather plus the attention, per step,
  beside ``padded attn ms``, the same attention over the padded tensor as held;
- ``padded``: one tensor per layer padded to its longest row and head, a validity mask
  (``PressedCache(groups=1)``);
- ``grouped``: the layer's KV heads in groups of similar lengths, each padded to its longest
  (``keep.length_groups``; ``PressedCache``'s default);
- ``plain``: the uncompressed cache (``kvcache.GrowingCache``), for reference.

Bytes are the caches' own (``nbytes``, checked against ``keep.pressed_bytes``); step times are
whole-model greedy decode steps through each cache (the head-wise attention in scope), the
caches taking turns step by step, medians. Prints markdown rows. ``--real``: bytes only, from
keep sets on the real SmolLM2-135M-Instruct's own keys (a prompt of this repository's docs).

    OMP_NUM_THREADS=1 .venv/bin/python bench/pressed_storage.py --lengths 2048 8192 --budgets 0.1 0.25
    OMP_NUM_THREADS=2 .venv/bin/python bench/pressed_storage.py --real --lengths 2048 --presses adakv headkv snapkv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bench.headwise_memory import Stepper, interleaved  # noqa: E402
from retrieval_head.core.attend import Call, attend_grouped  # noqa: E402
from retrieval_head.core.headwise_attend import HeadwiseAttention  # noqa: E402
from retrieval_head.core.intervene import intervene  # noqa: E402
from retrieval_head.core.keep import PRESSED_GROUPS, pressed_bytes, row_slots  # noqa: E402
from retrieval_head.core.kvcache import GrowingCache  # noqa: E402
from retrieval_head.core.pressed import PressedCache  # noqa: E402
from retrieval_head.core.pressing import PressHeads  # noqa: E402
from retrieval_head.core.seen import Seen  # noqa: E402
from retrieval_head.headfiles.load import load_ranking  # noqa: E402
from retrieval_head.models.shape import ModelShape  # noqa: E402
from retrieval_head.presses.registry import make_press  # noqa: E402

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True)
SCORES = ROOT / "head_score" / "SmolLM2-135M-Instruct.kv_max.json"
MIB = 2**20


def model_and_shape(length: int):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2, max_position_embeddings=length + 512,
                                         attn_implementation="sdpa")).eval()
    return model, ModelShape.of(model)


def random_layers(
    shape: ModelShape, press, budget: float, batch: int, length: int, seed: int = 0, dtype=torch.float32, device="cpu"
):
    """Per layer, lazily (one layer's keys in memory at a time): (keys, values, keep set) of
    random data, the press asked as at a prefill's end; ``seed``: another draw of rows."""
    g = torch.Generator(device=device).manual_seed(seed)
    shares = press.layer_shares(shape, budget)
    size = (batch, shape.num_kv_heads, length, shape.head_dim)
    for layer in range(shape.num_layers):
        k = torch.randn(size, generator=g, device=device, dtype=dtype)
        v = torch.randn(size, generator=g, device=device, dtype=dtype)
        q_size = (batch, shape.num_heads, min(press.window, length), shape.head_dim)
        q = torch.randn(q_size, generator=g, device=device, dtype=dtype)
        seen = Seen(layer, k, v, q, shape.head_dim**-0.5, torch.zeros(batch, dtype=torch.long, device=device))
        yield k, v, press.keep(seen, shares[layer])


def pressed(shape: ModelShape, press, budget: float, layers, groups: int, reserve: int) -> PressedCache:
    """A phase-decode pressed cache holding ``layers`` (an iterable of each layer's keys, values
    and keep set, ``random_layers``) as its prefill would have left them."""
    cache = PressedCache(shape, press, budget, groups=groups, reserve=reserve)
    for i, (layer, (k, v, keep)) in enumerate(zip(cache.layers, layers)):
        length = k.shape[2]
        layer.update(k, v)  # every key, as a prefill's update
        layer.simulation = PressHeads(press, cache.shares, length)
        layer.simulation.kept[i], layer.simulation.done[i] = keep, {length}  # what the press answered
        layer.compress()
    return cache


def plain(layers, reserve: int) -> GrowingCache:
    cache = GrowingCache(reserve=reserve)
    for i, (k, v, _) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def attention_ms(shape: ModelShape, layers, steps: int) -> tuple[float, float]:
    """Median ms of a step's attention alone (every layer, one query row) through
    ``attend_grouped``: over a flattened layout (each layer's runs gathered back into one padded
    tensor with its mask, then attended), and over that padded tensor as held (no gather)."""
    flats = []
    for k, v, keep in layers:
        b, kv, n, d = k.shape
        slots = row_slots(keep.reshape(b * kv, n)).reshape(b, kv, -1)
        runs = keep.gather(2, slots)  # the kept slots of each row and head
        idx = slots[..., None].expand(-1, -1, -1, d)
        pk, pv = k.gather(2, idx), v.gather(2, idx)
        where = runs.nonzero(as_tuple=True)  # each flattened key's (row, head, slot)
        flats.append((pk[where], pv[where], where, runs, pk, pv))
    query = torch.randn(layers[0][0].shape[0], shape.num_heads, 1, shape.head_dim)
    flat, padded = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        for fk, fv, where, runs, pk, _ in flats:
            gk, gv = fk.new_zeros(pk.shape), fv.new_zeros(pk.shape)
            gk[where], gv[where] = fk, fv
            attend_grouped(Call(0, query, gk, gv, None, None), runs[:, :, None, :])
        t1 = time.perf_counter()
        for _, _, _, runs, pk, pv in flats:
            attend_grouped(Call(0, query, pk, pv, None, None), runs[:, :, None, :])
        t2 = time.perf_counter()
        flat.append(t1 - t0)
        padded.append(t2 - t1)
    return statistics.median(flat) * 1e3, statistics.median(padded) * 1e3


def row(model, shape, name: str, budget: float, length: int, args, scores) -> str:
    press = make_press(name, shape, scores if name == "headkv" else None)
    layers = list(random_layers(shape, press, budget, args.batch, length))
    reserve = args.steps + 2
    caches = {"plain": plain(layers, reserve), "padded": pressed(shape, press, budget, layers, 1, reserve),
              "grouped": pressed(shape, press, budget, layers, args.groups, reserve)}
    kept = [keep for _, _, keep in layers]
    exact = sum(int(keep.sum()) for keep in kept) * 2 * shape.head_dim * 4
    for kind in ("padded", "grouped"):
        want = pressed_bytes(kept, length, shape.head_dim, 4, most=caches[kind].most)
        assert caches[kind].nbytes() == want, (kind, caches[kind].nbytes(), want)
    full = caches["plain"].layers[0].keys.numel() * 8 * shape.num_layers
    held = {k: caches[k].nbytes() for k in ("padded", "grouped")}  # before the steps add theirs
    steppers = {k: Stepper(model, c, args.batch, None if k == "plain" else HeadwiseAttention())
                for k, c in caches.items()}
    ms = {k: statistics.median(t) * 1e3 for k, t in interleaved(steppers, args.steps).items()}
    groups = sum(len(layer.groups) for layer in caches["grouped"].layers) / shape.num_layers
    flat, alone = attention_ms(shape, layers, args.steps)
    return (f"| {length} | {name} | {budget:.2f} | {full / MIB:.1f} | {exact / MIB:.2f} | "
            f"{held['padded'] / MIB:.2f} ({held['padded'] / exact:.2f}x) | "
            f"{held['grouped'] / MIB:.2f} ({held['grouped'] / exact:.2f}x) | {groups:.1f} | "
            f"{ms['plain']:.1f} | {ms['padded']:.1f} | {ms['grouped']:.1f} | {alone:.2f} | {flat:.2f} |")


def real_keys(lengths: list[int], presses: list[str], budgets: list[float]) -> None:
    """The bytes of the layouts from keep sets on the real SmolLM2-135M-Instruct's own keys (the
    embedded model, a prompt of this repository's docs): a real model's heads differ more than
    random data's, AdaKV's included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrieval_head.models.embedded import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    model = AutoModelForCausalLM.from_pretrained(default_model_dir()).eval()
    shape = ModelShape.of(model)
    text = " ".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    scores, _ = load_ranking(SCORES, shape, "kv")
    print("| tokens | press | budget | exact MiB | padded MiB | grouped MiB |\n|---|---|---|---|---|---|")
    for length in lengths:
        ids = tok(text, return_tensors="pt").input_ids[:, :length]
        for name in presses:
            press = make_press(name, shape, scores if name == "headkv" else None)
            for budget in budgets:
                hook = PressHeads(press, press.layer_shares(shape, budget), length)
                with torch.no_grad(), intervene(model, hooks=[hook]):
                    model(input_ids=ids, cache=GrowingCache(), use_cache=True)
                kept = [hook.kept[i] for i in range(shape.num_layers)]
                exact = sum(int(k.sum()) for k in kept) * 2 * shape.head_dim * 4
                cols = [pressed_bytes(kept, length, shape.head_dim, 4, most=most) for most in (1, PRESSED_GROUPS)]
                print(f"| {length} | {name} | {budget:.2f} | {exact / MIB:.2f} | "
                      + " | ".join(f"{c / MIB:.2f} ({c / exact:.2f}x)" for c in cols) + " |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--presses", nargs="+", default=["adakv", "headkv"])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--groups", type=int, default=PRESSED_GROUPS)
    p.add_argument("--real", action="store_true", help="bytes only, from the real SmolLM2's keys (embedded model)")
    args = p.parse_args(argv)
    if args.real:
        return real_keys(args.lengths, args.presses, args.budgets)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads; MiB of keys and values; ms: whole-model "
          "decode step (median); attn ms: a step's attention alone, padded as held / flattened and gathered back")
    print("| tokens | press | budget | plain MiB | exact MiB | padded MiB | grouped MiB | groups/layer "
          "| plain ms | padded ms | grouped ms | padded attn ms | flat attn ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        model, shape = model_and_shape(length)
        scores, _ = load_ranking(SCORES, shape, "kv")
        for name in args.presses:
            for budget in args.budgets:
                print(row(model, shape, name, budget, length, args, scores), flush=True)


if __name__ == "__main__":
    main()
