"""Helpers the tests share (imported as ``from helpers import ...``; conftest.py holds the
fixtures): tiny random-weight models, the one stub tokenizer, the bad-input files, an
eager re-scoring oracle. Nothing here is a test."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from retrieval_head.core.decode import cache_kwarg

LAYERS, HEADS, KV_HEADS, HIDDEN = 3, 4, 2, 64  # tiny_model's shape
HEAD_DIM = HIDDEN // HEADS
SLIDING_WINDOW = 8  # the "mistral" tiny models: every layer attends to the last 8 positions only
NEEDLE = {"needle": "The code word is heron.", "question": "What is the code word?", "real_needle": "heron"}


class IdsTokenizer:
    """Just enough tokenizer for decoding random models: ``decode`` joins the ids."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@contextlib.contextmanager
def one_thread():
    """One torch thread, restored on exit. On 2 shared cores a second intra-op thread that
    gets descheduled makes every op wait: tiny models ran ~10x slower that way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny_llama(vocab=128, layers=3, heads=4, kv_heads=2, seed=0, **kw):
    """A random-weight Llama (GQA by default) small enough for any test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16 * heads, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512, **kw)
    return LlamaForCausalLM(cfg).eval()


def tiny_model(attn: str = "sdpa", seed: int = 0, vocab: int = 128, hidden: int = HIDDEN,
               max_positions: int = 256, family: str = "llama"):
    """A GQA model (4 query heads, 2 KV heads) with weights large enough for peaked attention.

    HF's default init (std 0.02) gives near-uniform attention, so masking would change
    the logits by ~1e-6 and every comparison would pass vacuously; std 0.2 makes
    masking move the logits by far more than the tolerances used below.
    family "mistral" is the same shape with a sliding window (its caches are not croppable).
    """
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  max_position_embeddings=max_positions, initializer_range=0.2,
                  attn_implementation=attn, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).to(torch.float32).eval()
    cfg = MistralConfig(sliding_window=SLIDING_WINDOW, **common)
    return MistralForCausalLM(cfg).to(torch.float32).eval()


def ids_of(n: int, seed: int = 1, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def forward(model, ids, cache=None) -> torch.Tensor:
    kw = {} if cache is None else {cache_kwarg(model): cache, "use_cache": True}
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def eager_rescore(model, trial: dict) -> list:
    """Re-score a saved trial (``--save_prompts``) with plain eager attention weights: one
    forward over prompt + response with ``output_attentions=True``, argmax per head."""
    from retrieval_head.core.scoring import RetrievalScorer

    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        prompt, resp = trial["prompt_ids"], trial["response_ids"]
        with torch.no_grad():
            att = model(torch.tensor([prompt + resp[:-1]]), output_attentions=True, logits_to_keep=1).attentions
        sc = RetrievalScorer(prompt, tuple(trial["needle_span"]), model.config.num_hidden_layers,
                             model.config.num_attention_heads)
        for step, tok in enumerate(resp):
            q = len(prompt) - 1 + step
            sc.update(torch.stack([a[0, :, q, : q + 1].argmax(-1) for a in att]), tok)
        return sc.scores().tolist()
    finally:
        model.config._attn_implementation = impl


def save_tiny_llama(folder: Path, tokenizer) -> Path:
    """A random 2-layer Llama (4 heads, 2 KV heads, 1024 positions) with ``tokenizer``, saved as a
    model folder the command line can load: a CLI run in a second or two (its answers are noise)."""
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
                     ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_inputs(root: Path, tokenizer) -> dict[str, Path]:
    """The files the cases point at: a tiny Llama (with the default tokenizer), a GPT-Neo, ..."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, T5Config

    p = {k: root / k for k in ("tiny", "neo", "t5", "empty_hay", "latin1_hay", "short_hay", "out")}
    save_tiny_llama(p["tiny"], tokenizer)
    v = len(tokenizer)
    GPTNeoForCausalLM(GPTNeoConfig(vocab_size=v, hidden_size=32, num_layers=2, num_heads=4,
                                   attention_types=[[["global"], 2]], max_position_embeddings=1024)
                      ).save_pretrained(p["neo"])
    tokenizer.save_pretrained(p["neo"])
    p["t5"].mkdir()
    T5Config(vocab_size=v, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4).save_pretrained(p["t5"])
    p["empty_hay"].mkdir()
    p["latin1_hay"].mkdir()
    (p["latin1_hay"] / "a.txt").write_bytes("caf\xe9 cr\xe8me. ".encode("latin-1") * 50)
    p["short_hay"].mkdir()
    (p["short_hay"] / "a.txt").write_text("A short text. Only a few sentences. " * 5)
    # the original's haystack_for_detect/ layout gone wrong (needles.jsonl beside part1, part2, ...)
    for k, parts in {"orig_no_part1": {"part2": True}, "orig_empty_part": {"part1": False},
                     "parts_only": {"part1": True, "part2": True}}.items():
        p[k] = root / k
        for part, text in parts.items():
            (p[k] / part).mkdir(parents=True)
            if text:
                (p[k] / part / "a.txt").write_text("A line of text. " * 200)
        if k != "parts_only":
            (p[k] / "needles.jsonl").write_text(json.dumps(NEEDLE) + "\n")
    p["truncated"] = root / "truncated"  # a cut-off download: the tiny Llama, its weights file half there
    shutil.copytree(p["tiny"], p["truncated"])
    weights = p["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    lines = {"needles_ok": [NEEDLE], "needles_fields": [{"needle": "x"}],
             "needles_outside": [dict(NEEDLE, real_needle="swan")],
             "needles_number": [dict(NEEDLE, needle=5)], "needles_list": [dict(NEEDLE, question=["What?"])],
             "needles_hay_number": [dict(NEEDLE, haystack=3)]}
    for k, recs in lines.items():
        p[k] = root / f"{k}.jsonl"
        p[k].write_text("".join(json.dumps(r) + "\n" for r in recs))
    p["needles_notjson"] = root / "bad.jsonl"
    p["needles_notjson"].write_text("{not json\n")
    p["needles_latin1"] = root / "latin1.jsonl"
    p["needles_latin1"].write_bytes((json.dumps(dict(NEEDLE, needle="Caf\xe9. " + NEEDLE["needle"]),
                                                ensure_ascii=False) + "\n").encode("latin-1"))
    p["hs_bad"] = root / "bad.json"
    p["hs_bad"].write_text("not json at all\n")
    p["hs_other"] = root / "other.json"
    p["hs_other"].write_text(json.dumps({f"{l}-{h}": [0.5] for l in range(32) for h in range(32)}) + "\n")
    p["hs_tiny"] = root / "tiny.json"
    p["hs_tiny"].write_text(json.dumps({f"{l}-{h}": [0.05 * (4 * l + h)] for l in range(2) for h in range(4)}) + "\n")
    grid = {f"{l}-{h}": [0.25, 0.5] for l in range(2) for h in range(4)}  # the tiny Llama's 2 x 4, 2 trials
    hs = {"hs_ragged": dict(grid, **{"1-3": [0.25]}), "hs_nan": dict(grid, **{"1-2": [0.25, float("nan")]}),
          "hs_inf": dict(grid, **{"0-3": [float("inf"), 0.5]}), "hs_bool": dict(grid, **{"0-1": [True, 0.5]}),
          "hs_str": dict(grid, **{"0-1": [0.25, "0.5"]}), "hs_twice": dict(grid, **{"00-1": [1.0, 1.0]})}
    for k, d in hs.items():
        p[k] = root / f"{k}.json"
        p[k].write_text(json.dumps(d) + "\n")  # NaN and Infinity as json.dumps writes (and json.loads reads) them
    p["hs_dupkey"] = root / "hs_dupkey.json"
    p["hs_dupkey"].write_text(json.dumps(grid)[:-1] + ', "1-3": [1.0, 1.0]}\n')
    # head files of the other formats (tests/test_head_files.py reads the good ones), malformed
    duo_ok = "1\t0\n0\t1\n"  # the tiny Llama's 2 layers x 2 KV heads
    duo = {"hs_duo_range": (duo_ok.replace("0\t1", "0\t1.5"), {"sink_size": 64, "recent_size": 256}),
           "hs_duo_ragged": ("1\t0\n0\n", {"sink_size": 64, "recent_size": 256}),
           "hs_duo_text": ("1\t0\nzero\t1\n", {"sink_size": 64, "recent_size": 256}),
           "hs_duo_nosink": (duo_ok, {"recent_size": 256}),
           "hs_duo_other": (duo_ok + "1\t1\n", {"sink_size": 64, "recent_size": 256})}
    for k, (tsv, cfg) in duo.items():
        p[k] = root / k
        p[k].mkdir()
        (p[k] / "full_attention_heads.tsv").write_text(tsv)
        (p[k] / "config.json").write_text(json.dumps(cfg) + "\n")
    p["hs_duo_ragged"] = p["hs_duo_ragged"] / "full_attention_heads.tsv"  # the TSV itself, not its folder
    other = {"hs_razor_str": {"0": ["1"], "1": []}, "hs_razor_layer": {"0": [1], "7": [0]},
             "hs_layers_head": {"layer_0": [1], "layer_1": [9]}, "hs_layers_bool": {"layer_0": [True]},
             "hs_qr_pair": [["0-1", 0.5, 1]], "hs_qr_score": [["0-0", 0.5], ["0-1", "0.25"]],
             "hs_empty_obj": {}, "hs_empty_list": [], "hs_mixed": {"0": [1], "0-1": [0.5]}}
    for k, d in other.items():
        p[k] = root / f"{k}.json"
        p[k].write_text(json.dumps(d, indent=2) + "\n")  # indented, as RazorAttention and QRHead write
    p["a_file"] = root / "a_file"
    p["a_file"].write_text("x")
    p["empty_txt"] = root / "empty.txt"
    p["empty_txt"].write_text(" \n")
    return dict(p, **trial_logs(root))


def trial_logs(root: Path) -> dict[str, Path]:
    """A good trial log of the tiny Llama's 2 x 4 heads, and bad ones."""
    rec = lambda d, **kw: json.dumps(dict(dict(needle_id=0, context_length=300, depth_percent=d, passed=True,  # noqa: E731
                                               head_scores=[[0.1, 0.2, 0.3, 0.0], [0.5, 0.0, 0.1, 0.9]]), **kw))
    logs = {"trials": [rec(d) for d in (0, 50, 100)], "trials_broken": ["{not json", rec(0)],
            "trials_nokeys": [json.dumps(dict(passed=True, head_scores=[[0.0]]))],
            "trials_ragged": [rec(0), rec(50, head_scores=[[0.0]])], "trials_nopass": [rec(0, passed=False)]}
    for k, lines in logs.items():
        (root / f"{k}.trials.jsonl").write_text("".join(line + "\n" for line in lines))
    return {k: root / f"{k}.trials.jsonl" for k in logs}
