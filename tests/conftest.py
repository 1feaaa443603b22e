"""Shared fixtures: the embedded default model (installed by `make install`) and its
tokenizer. Shared helpers (tiny models, the stub tokenizer, oracles) are in helpers.py.
Nothing is downloaded: `make test` sets HF_HUB_OFFLINE=1."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite on several processes (pytest-xdist): one thread each, set before
    # torch is imported (children inherit it), since two threads per process on 2 shared cores
    # make every op wait on a descheduled thread.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def default_model_dir():
    from retrieval_head.models.embedded import default_model_dir as d

    return d()


@pytest.fixture(scope="session")
def default_tokenizer():
    from transformers import AutoTokenizer

    path = default_model_dir()
    if not (path / "config.json").is_file():
        pytest.skip("default model not installed (run `make install`)")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def default_model():
    from retrieval_head import ModelSpec, load_model

    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("default model not installed (run `make install`)")
    model, tok, info = load_model(ModelSpec(device="cpu"))
    return model, tok, info


@pytest.fixture(scope="module")
def one_thread_module():
    """torch on one thread for a whole module (``pytestmark = pytest.mark.usefixtures(
    "one_thread_module")``); helpers.one_thread says why."""
    from helpers import one_thread

    with one_thread():
        yield
