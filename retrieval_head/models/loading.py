"""Loading any Hugging Face causal LM (hub id or local folder) or the embedded default.

In two steps, so that every input can be checked before the weights load:
``open_model`` reads the config and the tokenizer (and builds the ``ModelShape``: the only
reader of model facts); ``load_weights`` then loads the model. ``load_model`` does both.
Nothing here dispatches on model names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .embedded import (
    DEFAULT_MODEL_NAME,
    embedded,
    ensure_default_model,
    ensure_embedded,
)
from .shape import ModelShape
from .spec import ModelSpec  # noqa: F401 (re-exported: the API)

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_name(model_path: str | None, suffix: str | None = None) -> str:
    """Basename of the path or hub id (an embedded model's name), plus the original's ``_suffix``.

    >>> model_name("meta-llama/Llama-2-7b-hf", "80k")
    'Llama-2-7b-hf_80k'
    >>> model_name("embedded:gemma3")
    'gemma-3-270m'
    """
    if model_path is None:
        base = DEFAULT_MODEL_NAME
    elif str(model_path).startswith(EMBEDDED_PREFIX):
        base = embedded(str(model_path)[len(EMBEDDED_PREFIX):]).name
    else:
        base = Path(str(model_path).rstrip("/\\")).name
    return f"{base}_{suffix}" if suffix else base


def looks_local(path: str) -> bool:
    """A path the user meant as a folder (a hub id is ``name`` or ``org/name``)."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path or os.path.exists(path)


def resolve_source(model_path: str | None) -> str:
    """The folder or hub id to load; checks local-looking paths before transformers does.

    ``embedded:<key>`` (a key of ``default_model.EMBEDDED``, e.g. ``embedded:gemma3``) is
    that embedded model's converted folder, converted on first use."""
    if model_path is None:
        return str(ensure_default_model())
    if model_path.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded(model_path[len(EMBEDDED_PREFIX):]))
    if looks_local(model_path):
        p = Path(model_path).expanduser()
        if p.is_file():
            hint = f": {p.parent}" if (p.parent / "config.json").is_file() else ""
            raise UserError(f"--model_path {model_path} is a file, not a model folder; pass the folder that holds "
                            f"config.json{hint}")
        if not p.is_dir():
            raise UserError(f"model folder {model_path} does not exist; pass --model_path DIR or a hub id")
        if not (p / "config.json").is_file():
            raise UserError(f"{model_path} has no config.json; it is not a Hugging Face model folder")
        return str(p)
    return model_path


def hub_unreachable(repo_id: str, revision: str | None) -> bool:
    """True when the hub cannot be reached (decided in well under a second, where
    transformers would retry for ~27 s); a missing repo or revision is a UserError."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return True
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=10)
    except HfHubHTTPError as e:
        if getattr(e.response, "status_code", None) in (401, 403, 404):
            raise UserError(f"model {repo_id!r} (revision {revision or 'main'}) is not on the hub or not "
                            "accessible; check the id and revision, or log in for gated models") from None
        return False  # other hub errors: let transformers try (and report)
    except Exception as e:  # connection errors of the HTTP client in use
        if any(w in type(e).__name__ for w in ("Connect", "Timeout", "Network", "Transport")) or isinstance(e, OSError):
            return True
        raise
    return False


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class Opened:
    """A model opened without its weights: what ``plan`` needs to check a sweep."""

    spec: ModelSpec
    source: str
    config: object
    tokenizer: object
    shape: ModelShape
    common: dict


def open_model(spec: ModelSpec) -> Opened:
    """The config and tokenizer of ``spec``'s model (no weights), checked to be a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(spec.model_path)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if not os.path.isdir(source) and hub_unreachable(source, spec.revision):
        common["local_files_only"] = True  # use the local cache, fail fast if it lacks the model
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = ("the hub is offline (HF_HUB_OFFLINE=1)" if offline
                else "the hub cannot be reached and it is not in the local cache" if common.get("local_files_only")
                else "check the id, the revision and the network")
        raise UserError(f"cannot load model {source!r}: {str(e).splitlines()[0]} ({hint})") from None
    if type(config) not in AutoModelForCausalLM._model_mapping and not spec.trust_remote_code:
        raise UserError(f"{source!r} is a {config.model_type} model ({type(config).__name__}), not a causal LM; "
                        "pass a causal language model")
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    return Opened(spec, source, config, tokenizer, ModelShape.from_config(config), common)


def load_weights(opened: Opened):
    """The model of an opened spec, on its device, in eval mode."""
    from transformers import AutoModelForCausalLM

    spec, source = opened.spec, opened.source
    device = resolve_device(spec.device)
    kwargs = dict(opened.common, dtype=resolve_dtype(spec.dtype, device))
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.device_map:
        kwargs["device_map"] = spec.device_map
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=opened.config, **kwargs)
    except SafetensorError as e:  # e.g. "incomplete metadata, file not fully covered": a cut-off download
        raise UserError(f"cannot load {source!r}: a weights file (*.safetensors) is truncated or corrupt "
                        f"({str(e).splitlines()[0]}); re-download or re-convert the model") from None
    except (ValueError, OSError) as e:
        raise UserError(f"cannot load {source!r} as a causal LM: {str(e).splitlines()[0]}") from None
    except ImportError as e:
        raise UserError(f"attention backend unavailable: {str(e).splitlines()[0]}") from None
    if not spec.device_map:
        model.to(device)
    model.eval()
    return model


def model_info(opened: Opened, model) -> dict:
    """The manifest's model record."""
    shape = ModelShape.of(model)
    info = {
        "model_path": opened.spec.model_path or f"embedded:{DEFAULT_MODEL_NAME}",
        "source": opened.source,
        "revision": opened.spec.revision,
        "commit_hash": getattr(model.config, "_commit_hash", None),
        "class": type(model).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "device_map": opened.spec.device_map,
        "attn_implementation": model.config._attn_implementation,
        "num_layers": shape.num_layers,
        "num_heads": shape.num_heads,
        "num_kv_heads": shape.num_kv_heads,
        "shape": shape.record(),
    }
    log.info("loaded %s (%s, %s, attention %s)", opened.source, info["class"], info["dtype"],
             info["attn_implementation"])
    return info


def load_model(spec: ModelSpec):
    """Return ``(model, tokenizer, info)``; ``info`` is the manifest's model record."""
    opened = open_model(spec)
    model = load_weights(opened)
    return model, opened.tokenizer, model_info(opened, model)


def model_identity(info: dict) -> dict:
    """The part of a model record that changes results (for resume and merge fingerprints)."""
    return {k: info[k] for k in ("source", "revision", "commit_hash", "dtype", "attn_implementation")}
