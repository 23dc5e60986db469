"""Calibration sets: N windows of L tokens, sampled deterministically, saved with a manifest.

The corpus's documents are joined with "\\n\\n" and tokenized once without special tokens; the token
stream is cut into floor(T / L) consecutive slots and N distinct slots are drawn with a seeded
generator, so windows never overlap and the same (corpus, tokenizer, seed, N, L) gives the same set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from pruning.data.corpora import TextCorpus, TextProvenance
from pruning.errors import ConfigError
from pruning.io import atomic_directory, sha256_text, write_json

DOCUMENT_SEPARATOR = "\n\n"
TOKENS_FILE = "calibration.safetensors"
MANIFEST_FILE = "manifest.json"


class TokenizerIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    class_name: str
    name_or_path: str
    vocab_size: int
    vocab_sha256: str


class CalibrationManifest(BaseModel):
    """The calibration windows: their text source, tokenizer, sampling and the digest of the token ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: TextProvenance
    tokenizer: TokenizerIdentity
    seed: int
    num_samples: int
    seqlen: int
    corpus_tokens: int
    documents: int
    separator: str
    windows_sha256: str


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # (num_samples, seqlen) int64
    manifest: CalibrationManifest


def tokenize_corpus(corpus: TextCorpus, tokenizer: Any) -> torch.Tensor:
    """The documents joined with "\\n\\n", tokenized once without special tokens, as a 1-D int64 tensor."""
    text = DOCUMENT_SEPARATOR.join(corpus.documents)
    # verbose=False: a corpus is longer than the model's context by design; it is cut into windows afterwards.
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.int64)


def tokenizer_identity(tokenizer: Any) -> TokenizerIdentity:
    vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    return TokenizerIdentity(class_name=type(tokenizer).__name__, name_or_path=str(tokenizer.name_or_path),
                             vocab_size=len(tokenizer), vocab_sha256=sha256_text(vocabulary))


def sample_windows(tokens: torch.Tensor, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """N distinct non-overlapping windows of L tokens, in a seeded random order."""
    slots = tokens.numel() // seqlen
    if slots == 0:
        raise ConfigError(f"calibration.source: the text holds {tokens.numel()} tokens, not one window of {seqlen}; "
                         "give a corpus with text in it (is the file empty, or its text_field wrong?)")
    if num_samples > slots:
        raise ConfigError(f"calibration.num_samples: {num_samples} windows of {seqlen} tokens need "
                         f"{num_samples * seqlen} tokens but the corpus holds {tokens.numel()}; "
                         f"lower num_samples to at most {slots} or seqlen, or use a larger corpus")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(slots, generator=generator)[:num_samples]
    return tokens[: slots * seqlen].view(slots, seqlen)[chosen].clone()


def build_calibration_set(corpus: TextCorpus, tokenizer: Any, num_samples: int, seqlen: int,
                          seed: int) -> CalibrationSet:
    tokens = tokenize_corpus(corpus, tokenizer)
    windows = sample_windows(tokens, num_samples, seqlen, seed)
    manifest = CalibrationManifest(
        corpus=corpus.provenance, tokenizer=tokenizer_identity(tokenizer), seed=seed, num_samples=num_samples,
        seqlen=seqlen, corpus_tokens=int(tokens.numel()), documents=len(corpus.documents),
        separator=DOCUMENT_SEPARATOR, windows_sha256=sha256_text(",".join(map(str, windows.flatten().tolist()))))
    return CalibrationSet(windows, manifest)


def save_calibration_set(calibration: CalibrationSet, directory: Path) -> None:
    """Write the windows (safetensors) and manifest (JSON) atomically into `directory`."""
    with atomic_directory(directory) as staging:
        save_file({"input_ids": calibration.input_ids.contiguous()}, str(staging / TOKENS_FILE))
        write_json(staging / MANIFEST_FILE, calibration.manifest.model_dump(mode="json"))


def load_calibration_manifest(directory: Path) -> CalibrationManifest:
    """The manifest of a calibration set folder (what the calibrate step wrote); a folder without one is refused."""
    if not (directory / MANIFEST_FILE).is_file() or not (directory / TOKENS_FILE).is_file():
        raise ConfigError(f"calibration: '{directory}' holds no calibration set ({MANIFEST_FILE} and {TOKENS_FILE}); "
                          "give the folder the calibrate stage wrote")
    return CalibrationManifest.model_validate_json((directory / MANIFEST_FILE).read_text())


def load_calibration_set(directory: Path) -> CalibrationSet:
    return CalibrationSet(load_file(str(directory / TOKENS_FILE))["input_ids"], load_calibration_manifest(directory))
