"""Decoding a cell's conditions as one batch changes no response and no score on the
default model in fp32 (the lever that makes masked sweeps cheap)."""

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
    for batch in (False, True):
        st = NiahSettings(max_new_tokens=30, model_name="M", batch_conditions=batch)
        runs[batch] = run_niah(model, tok, builder, needle, [700], [20, 80], conditions, stop, st, progress=False)
    for folder in runs[False]:
        a = [(r["response_ids"], r["score"]) for r in runs[False][folder]]
        b = [(r["response_ids"], r["score"]) for r in runs[True][folder]]
        assert a == b, folder
    assert len({tuple(r["response_ids"]) for recs in runs[True].values() for r in recs}) > 1
