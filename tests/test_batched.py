"""Decoding a cell's conditions as one batch, and cells sharing their prompt prefix decoded
together, change no response and no score on the default model in fp32 (the levers that make
masked sweeps cheap)."""

import pytest
import torch

from retrieval_head.decode import stop_token_mask
from retrieval_head.detect import Haystacks
from retrieval_head.haystack import load_needles
from retrieval_head.niah import NiahSettings, make_conditions, run_niah


@pytest.mark.slow
def test_batched_conditions_equal_one_by_one(default_model):
    model, tok, _ = default_model
    # any ranking will do; 60 of 270 heads masked so that the answers differ between conditions
    scores = torch.rand(30, 9, generator=torch.Generator().manual_seed(3)) * 0.05
    conditions = make_conditions("M", [0, 60, -60], scores, "uniform", "decode", [0, 1], seed_folders=True)
    needle = load_needles()[0]
    builder = Haystacks(tok, True).for_needle(needle)
    stop = stop_token_mask(model, tok)
    runs = {}
    # one by one; a cell's conditions as one batch; and (the default) cells sharing their prompt
    # prefix, the two cells' 2 x 5 (cell, condition) rows decoded as one batch
    for name, kw in (("one by one", dict(batch_conditions=False)), ("per cell", dict(batch_conditions=True, batch_tokens=0)),
                     ("grouped", dict(batch_conditions=True))):
        st = NiahSettings(max_new_tokens=30, model_name="M", **kw)
        out = run_niah(model, tok, builder, needle, [700], [20, 80], conditions, stop, st, progress=False)
        runs[name] = {folder: [(r["depth_percent"], r["response_ids"], r["score"]) for r in recs]
                      for folder, recs in out.items()}
    assert runs["per cell"] == runs["one by one"] and runs["grouped"] == runs["one by one"]
    assert len({tuple(ids) for recs in runs["grouped"].values() for _, ids, _ in recs}) > 1
