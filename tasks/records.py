"""The small typed records that tasks return and take: paths, digests, indices, never tensors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from tasks.artifacts import FileRef


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelArtifact(_Record):
    """A model as a local safetensors directory, identified by the digest of its source."""

    spec: str
    path: str
    digest: str
    num_blocks: int


class CalibrationArtifact(_Record):
    tokens: FileRef
    manifest: FileRef


class BlockState(_Record):
    """One block's progress: its inputs, the solved linears so far, and (once done) its outputs."""

    block_index: int
    inputs: FileRef
    linears: tuple[FileRef, ...] = ()
    reports: tuple[FileRef, ...] = ()
    outputs: FileRef | None = None


class PrunedModel(_Record):
    path: str
    record: FileRef
