"""Stage `build_calibration`: tokenized calibration windows and their manifest, in the artifact store."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pruning.config import CalibrationConfig
from pruning.data.calibration import MANIFEST_FILE, TOKENS_FILE, build_calibration_set, save_calibration_set
from pruning.data.corpora import load_corpus
from pruning.models.sources import load_tokenizer
from tasks.artifacts import ArtifactStore, FileRef, content_key
from tasks.records import CalibrationArtifact, ModelArtifact


@task(cache_policy=NO_CACHE, persist_result=False)
def build_calibration(model: ModelArtifact, calibration: CalibrationConfig, source_fingerprint: str,
                      cache_dir: str, store: ArtifactStore) -> CalibrationArtifact:
    """`source_fingerprint` (the corpus's sha256 or pinned revision) puts the text's content in the key."""
    directory = store.directory("calibration", content_key(model.digest, calibration, source_fingerprint))
    if not (directory / MANIFEST_FILE).is_file():
        corpus = load_corpus(calibration.source, "calibration", Path(cache_dir), calibration.text_field)
        calibration_set = build_calibration_set(corpus, load_tokenizer(Path(model.path)), calibration.num_samples,
                                                calibration.seqlen, calibration.seed)
        save_calibration_set(calibration_set, directory)
    return CalibrationArtifact(tokens=FileRef.of(directory / TOKENS_FILE),
                               manifest=FileRef.of(directory / MANIFEST_FILE))
