"""Shared fixtures: a tiny random Llama with the real Llama-3 tokenizer (offline).

Builders live in ``selfie_adapters.testing``; import them from there, never from this file.
"""

from __future__ import annotations

import os

import pytest
import torch

from selfie_adapters.testing import (
    make_llama3_tokenizer,
    make_tiny_llama,
    save_tiny_llama,
    toy_model,
    toy_tokenizer,
    write_toy_data,
)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# every in-process `main()` keeps that count (see selfie_adapters.threads): results stay comparable bit for bit
os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


@pytest.fixture(autouse=True)
def no_load_notices(monkeypatch):
    """The CLI's "loading MODEL…" line appears when a load takes SLOW_LOAD_S; on a busy machine even a
    tiny model may, so in-process CLI tests turn it off (tests/test_model_names.py turns it on)."""
    from selfie_adapters.cli import display

    monkeypatch.setattr(display, "SLOW_LOAD_S", float("inf"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests never write to the user's cache (dequantised GGUF models, topic indexes): SELFIE_CACHE points
    at a temp folder for the whole session, subprocesses included."""
    before = os.environ.get("SELFIE_CACHE")
    os.environ["SELFIE_CACHE"] = str(tmp_path_factory.mktemp("selfie-cache"))
    yield
    if before is None:
        os.environ.pop("SELFIE_CACHE", None)
    else:
        os.environ["SELFIE_CACHE"] = before


@pytest.fixture(scope="session")
def tokenizer():
    return make_llama3_tokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama + tokenizer saved to disk, as `from_pretrained` and the CLI expect."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """(data root, toy tokenizer, toy model): the toy training task, one per test module."""
    root = tmp_path_factory.mktemp("toy")
    write_toy_data(root)
    tok = toy_tokenizer()
    return root, tok, toy_model(tok)

