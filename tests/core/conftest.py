"""Fixtures shared by the core's tests."""

from __future__ import annotations

import pytest

import corpus as corpus_mod


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, torch):
    """The hostile and benign corpus of tests/corpus.py (test_corpus.py, and the torch.load
    prediction's tests), built once."""
    folder = tmp_path_factory.mktemp("corpus")
    samples = corpus_mod.build(folder / "files", folder / "MARKER")
    yield samples
    assert not (folder / "MARKER").exists(), "a payload ran while the corpus was read"
