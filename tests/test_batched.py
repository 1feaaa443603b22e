"""Masked NIAH on the scheduler: its levers (prefix reuse, batched decoding, chunks that fit
the budget) change no response and no score on the default model in fp32, and
``--batch_tokens`` bounds what one cell decodes at once."""

import pytest
import torch
from helpers import make_inputs
from transformers import LlamaForCausalLM

from retrieval_head.cli import mask as cli_niah
from retrieval_head.experiments.mask import NiahSettings, make_conditions, run_niah


@pytest.mark.slow
def test_masked_niah_levers_equal_independent_rows(default_model):
    model, tok, _ = default_model
    # any ranking will do; 60 of 270 heads masked so that the answers differ between conditions
    scores = torch.rand(30, 9, generator=torch.Generator().manual_seed(3)) * 0.05
    conditions = make_conditions("M", [0, 60, -60], scores, "uniform", "decode", [0, 1], seed_folders=True)
    runs = {}
    # one prefill per cell and one row at a time; cells sharing their prompt prefix; the 2 x 4
    # (cell, condition) rows in chunks that fit 2100 tokens; and the defaults (one batch of 8)
    for name, levers in (("independent", dict(prefix_reuse=False, batch_tokens=0)),
                         ("reuse", dict(batch_tokens=0)), ("chunks", dict(batch_tokens=2100)),
                         ("defaults", dict())):
        st = NiahSettings(context_lengths=(700,), depth_percents=(20, 80), max_new_tokens=30, **levers)
        out = run_niah(model, tok, st, conditions, model_name="M", progress=False)
        runs[name] = {folder: [(r["depth_percent"], r["response_ids"], r["score"]) for r in recs]
                      for folder, recs in out.items()}
    assert runs["reuse"] == runs["independent"] and runs["chunks"] == runs["independent"]
    assert runs["defaults"] == runs["independent"]
    assert len({tuple(ids) for recs in runs["defaults"].values() for _, ids, _ in recs}) > 1


def test_batch_tokens_bounds_the_rows_of_one_cell(tmp_path, default_tokenizer, monkeypatch):
    """3 conditions x 300 tokens do not fit --batch_tokens 700: the cell's rows decode in
    chunks of at most 2 (rows x prompt length <= the budget), from its one prefill."""
    p = make_inputs(tmp_path, default_tokenizer)
    rows, real = [], LlamaForCausalLM.forward

    def forward(self, *args, **kwargs):  # every decode step's batch size
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[1] == 1:
            rows.append(ids.shape[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    code = cli_niah.cli(["--model_path", str(p["tiny"]), "--needles", str(p["needles_ok"]), "--context_lengths",
                         "300", "--depth_percents", "50", "--max_new_tokens", "4", "--mask_top", "0", "2", "-2",
                         "--head_score", str(p["hs_tiny"]), "--batch_tokens", "700", "--quiet", "--no_plot",
                         "--output_dir", str(tmp_path / "out")])
    assert code == 0
    assert max(rows) * 300 <= 700, f"decode batches of {sorted(set(rows))} rows x 300 tokens"
    assert 2 in rows  # the chunks are batches, not one row at a time
