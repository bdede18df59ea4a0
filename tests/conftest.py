"""Shared fixtures: a real sentencepiece tokenizer and a tiny random XLM-R, built once per test session.

Both come from the package's own builders (framework/starting/) and its shipped text sample, so no test
touches a model hub.
Treat the directories as read-only: they are shared by every test in the session; copy one
(shutil.copytree) before changing it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from framework.resources import text_sample
from framework.starting import build_model, train_tokenizer

SAMPLE_TEXT = text_sample()
# Large enough that every script in the sample has whole-word pieces, small enough to train in ~2 s.
TEST_VOCAB_SIZE = 3000


@pytest.fixture(scope="session")
def sample_text_file() -> Path:
    """The shipped multilingual text sample (UTF-8, one line of names per line, many scripts)."""
    return SAMPLE_TEXT


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XLM-R tokenizer directory (bge-m3 layout) with TEST_VOCAB_SIZE + 2 ids; read-only."""
    return train_tokenizer([SAMPLE_TEXT], tmp_path_factory.mktemp("tokenizer"), vocab_size=TEST_VOCAB_SIZE,
                           seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny XLMRobertaModel (hidden 32, 2 layers, 512 tokens) plus tokenizer files; read-only."""
    return build_model(tokenizer_dir, tmp_path_factory.mktemp("tiny_model"), size="tiny", seed=0)
