"""Fixtures of the command-line tests: a tiny Llama checkpoint and a small text corpus, made once per module."""

import pytest
from tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny-llama", tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    return path
