"""The needle test's streaming conditions on the real head-wise KV cache (``--cache real``)
answer exactly as the masked simulation (``--cache masked``), cell by cell, in both phases
and both units (query heads that split a KV head included), and record the bytes the cache
held: those ``keep.cache_bytes`` predicts for the keep set. ``auto`` runs a condition on the
real cache only where its kept heads are whole KV heads."""

from __future__ import annotations

import json

import pytest
import torch
from families import SUPPORTED, build, matrix
from helpers import make_inputs, one_thread

from retrieval_head.cli import mask as cli_niah
from retrieval_head.core.decode import greedy_decode
from retrieval_head.core.intervene import HeadMask
from retrieval_head.core.keep import cache_bytes, mixed_heads
from retrieval_head.core.mask import PressMask
from retrieval_head.engine.realrows import RealCache, RealPress
from retrieval_head.engine.scheduler import Job, Levers, Scheduler
from retrieval_head.errors import UserError
from retrieval_head.experiments.condition import kv_keep, route, scheduled
from retrieval_head.experiments.mask import Condition
from retrieval_head.inputs.prompt import Prompt
from retrieval_head.models.shape import ModelShape
from retrieval_head.presses.knorm import Knorm

SINK, RECENT, STEPS = 2, 8, 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, default_tokenizer):
    return make_inputs(tmp_path_factory.mktemp("realcache"), default_tokenizer)


def run(p, out, phase: str, cache: str, unit: str = "kv", task: str = "single") -> dict:
    argv = ["--model_path", str(p["tiny"]), "--needles", str(p["needles_ok"]), "--context_lengths", "300",
            "--depth_percents", "20", "80", "--max_new_tokens", str(STEPS), "--mask_top", "0",
            "--keep_full", "1", "0", "-1", "--sink", str(SINK), "--recent", str(RECENT), "--phase", phase,
            "--unit", unit, "--head_score", str(p["hs_tiny"]), "--quiet", "--no_plot", "--output_dir",
            str(out), "--cache", cache, "--task", task]
    assert cli_niah.cli(argv) == 0
    return {f.relative_to(out).as_posix(): json.loads(f.read_text()) for f in sorted(out.glob("*/tiny_len_*.json"))}


def tiny_shape(p) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_config(AutoConfig.from_pretrained(p["tiny"]))


def kept_set(shape: ModelShape, record: dict) -> torch.Tensor:
    """A streaming record's keep set, bool ``[layers, units]`` in its unit (``kept``: pairs)."""
    units = shape.num_kv_heads if record["mask"]["unit"] == "kv" else shape.num_heads
    keep = torch.zeros(shape.num_layers, units, dtype=torch.bool)
    for layer, unit in record["mask"]["kept"]:
        keep[layer, unit] = True
    return keep


@pytest.mark.parametrize("phase,task,unit", [("decode", "single", "kv"), ("all", "single", "kv"),
                                             ("decode", "single", "query"),
                                             pytest.param("all", "single", "query", marks=pytest.mark.full),
                                             pytest.param("decode", "multikey", "kv", marks=pytest.mark.full)])
def test_real_cache_answers_as_the_masked_one_and_holds_the_predicted_bytes(inputs, tmp_path, phase, task, unit):
    """Query units: --keep_full 1 and -1 keep one query head of a KV head and stream the other."""
    real = run(inputs, tmp_path / "real", phase, "real", unit, task)
    masked = run(inputs, tmp_path / "masked", phase, "masked", unit, task)
    assert real.keys() == masked.keys() and len(real) == 2 * 4  # 2 cells x (reference + 3 streaming)
    shape = tiny_shape(inputs)
    per_token = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * 4  # float32 keys and values
    streamed = mixed = 0
    references = {name.split("/")[1]: r for name, r in real.items() if r["mask"]["mode"] != "stream"}  # by cell
    for name, r in real.items():
        m = masked[name]
        assert (r["response_ids"], r["model_response"], r["score"]) == \
               (m["response_ids"], m["model_response"], m["score"]), name
        if r["mask"]["mode"] != "stream":
            assert "cache" not in r["mask"] and r["mask"] == m["mask"]  # the reference: unchanged
            continue
        assert r["mask"]["cache"] == "real" and m["mask"]["cache"] == "masked" and "kv_bytes" not in m["mask"]
        length, rest = divmod(r["mask"]["kv_bytes_full"], per_token)
        assert rest == 0 and length == r["context_length"] - 1  # the prompt but its last token
        keep = kept_set(shape, r)
        mixed += bool(mixed_heads(shape, keep).any())
        want = cache_bytes(shape, keep, 1, length, 4, SINK, RECENT, at=length if phase == "decode" else None)
        assert r["mask"]["kv_bytes"] == want < r["mask"]["kv_bytes_full"]
        streamed += r["response_ids"] != references[name.split("/")[1]]["response_ids"]
    assert streamed, "streaming changed no answer: the comparison is vacuous"
    assert bool(mixed) == (unit == "query"), "no condition split a KV head: the query unit's check is vacuous"


def condition(kept: list[list[bool]], unit: str = "query") -> Condition:
    kept = torch.tensor(kept)
    return Condition("keep_top", 1, HeadMask(~kept, "stream", "decode", SINK, RECENT), unit=unit, kept=kept)


def test_auto_runs_on_the_real_cache_only_whole_kv_heads_real_every_streaming_condition(inputs):
    shape = tiny_shape(inputs)  # 2 layers x 4 heads, 2 KV heads: query heads 2k, 2k+1 share KV head k
    whole = condition([[True, True, False, False], [False, False, False, False]])
    split = condition([[True, False, False, False], [False, False, False, False]])
    kv = condition([[False, True], [False, False]], unit="kv")
    assert kv_keep(shape, whole).tolist() == [[True, False], [False, False]]
    assert kv_keep(shape, split) is None and kv_keep(shape, kv).tolist() == kv.kept.tolist()
    none = Condition("none", 0, None)
    assert route(shape, [none, whole, split, kv], "auto") == [False, True, False, True]
    assert route(shape, [none, whole, split, kv], "masked") == [False] * 4
    assert route(shape, [none, whole, split, kv], "real") == [False, True, True, True]  # every streaming one
    with pytest.raises(UserError, match="add --keep_full"):
        route(shape, [none], "real")
    press = Condition("press", 0, PressMask(Knorm(), 0.5), folder="tiny_press_knorm_b0.5")
    later = Condition("press", 0, PressMask(Knorm(), 0.5, "context"), folder="tiny_press_knorm_b0.5_context")
    assert route(shape, [none, press, later], "real") == [False, True, False]  # a press compressing the prompt
    assert route(shape, [none, press, kv], "auto") == [False, False, True]  # auto: presses simulated
    assert type(scheduled(shape, [press], "real")[0]) is RealPress
    masks = scheduled(shape, [none, whole, split, kv], "auto")  # what the scheduler runs for each
    assert masks[0] is None and masks[2] is split.mask
    assert [type(m) for m in masks[1::2]] == [RealCache, RealCache]
    assert masks[1].mask is whole.mask and torch.equal(masks[3].keep, kv.kept)


class NoText:
    """greedy_decode's tokenizer, for token ids only."""

    def decode(self, ids, skip_special_tokens=True):
        return ""


@pytest.mark.parametrize("phase", ["decode", "all"])
@pytest.mark.parametrize("fam", matrix(SUPPORTED))
def test_each_batched_real_row_is_the_masked_decode_of_its_prompt(fam, phase):
    """The scheduler's real-cache rows (two prompts of one length, one of another, batched;
    phase decode: each batch's plain prefill stacked once, compressed per condition) on every
    family, sliding windows shorter than the prompts included: each row is the masked
    simulation's greedy decode of its prompt alone, and holds the predicted bytes. Kept: query
    head 0 of every layer (under GQA it splits KV heads)."""
    with one_thread():
        model = build(fam)
        shape = ModelShape.of(model)
        stop = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        scheduler = Scheduler(model, shape, stop, STEPS, Levers(batch_tokens=10_000))
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(1, model.config.vocab_size, (n,), generator=g).tolist() for n in (30, 30, 41)]
        jobs = [Job(k, Prompt(ids, (0, 1), 0, len(ids))) for k, ids in enumerate(prompts)]
        kept = torch.zeros(shape.num_layers, shape.num_heads, dtype=torch.bool)
        kept[:, 0] = True
        mask = HeadMask(~kept, "stream", phase, SINK, RECENT)
        rows = list(scheduler.run(jobs, masks=[RealCache(kept, mask)]))
        assert sorted(len(r.job.prompt.ids) for r in rows) == [30, 30, 41]
        assert sorted(scheduler.stats["decode_batches"]) == [1, 2]  # the two of one length: one batch
        itemsize = next(model.parameters()).element_size()
        for row in rows:
            ids = row.job.prompt.ids
            assert row.ids == greedy_decode(model, NoText(), ids, stop, STEPS, mask=mask).ids
            n = len(ids) - 1
            at = n if phase == "decode" else None
            assert row.kv_bytes == cache_bytes(shape, kept, 1, n, itemsize, SINK, RECENT, at)
