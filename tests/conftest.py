"""Shared fixtures: a tiny random LLaMA checkpoint, real text, and the path to ../shared/data."""
from __future__ import annotations

from pathlib import Path

import pytest

from llmshrink import models, pypi, sources
from llmshrink.params import read

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_DIMS = read(ROOT / "params.yaml")["model"]["tiny"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> object:
    """A test whose fixtures need a download that neither the cache nor the registry has is skipped, with the reason."""
    try:
        return (yield)
    except pypi.DownloadError as err:
        pytest.skip(f"empty download cache and no registry: {err}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """As `pytest_runtest_setup`, for a download the test itself needs."""
    try:
        return (yield)
    except pypi.DownloadError as err:
        pytest.skip(f"empty download cache and no registry: {err}")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random LLaMA (float32) with the embedded model's tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    model, tokenizer = sources.tiny_model(TINY_DIMS, seed=0)
    models.save(model, tokenizer, path, "float32")
    return path


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real embedded SmolLM2-135M-Instruct saved as a float32 safetensors checkpoint."""
    path = tmp_path_factory.mktemp("embedded")
    model, tokenizer = sources.load_embedded()
    models.save(model, tokenizer, path, "float32")
    return path


@pytest.fixture(scope="session")
def prose() -> str:
    """Real English prose from the standard library's documentation (offline)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (WikiText-2, TriviaQA); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
