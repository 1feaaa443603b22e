"""The published head scores of the original work drive masking on a model of their shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.full  # a script run driven by published head files in a subprocess: `make test` only

ROOT = Path(__file__).resolve().parents[1]


def test_published_head_scores_drive_a_model_of_their_shape(tmp_path, default_tokenizer):
    """A published head_score file (../shared/reference) drives --mask_top on a model of the
    same [layers, heads] shape; tests never need ../shared, so this skips without it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ref = ROOT.parent / "shared" / "reference" / "head_score" / "llama-2-7b-80k.json"
    if not ref.is_file():
        pytest.skip("../shared/reference is not present")
    torch.manual_seed(0)
    model_dir = tmp_path / "llama-2-7b-80k-shaped"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(default_tokenizer), hidden_size=64, intermediate_size=64,
                                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                 max_position_embeddings=512)).save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "needle_in_haystack_with_mask.py"), "--model_path", str(model_dir),
                        "--head_score", str(ref), "--mask_top", "30", "-30", "--context_lengths", "150",
                        "--depth_percents", "50", "--max_new_tokens", "4", "--quiet", "--no_plot",
                        "--output_dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    top = json.loads(next((tmp_path / "out" / "llama-2-7b-80k-shaped_block_top30").glob("*_len_*.json")).read_text())
    assert [16, 19] in top["mask"]["heads"] and [11, 15] in top["mask"]["heads"] and len(top["mask"]["heads"]) == 30
