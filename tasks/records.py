"""The small typed records that tasks return and take: paths, digests, indices, never tensors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pruning.config import EngineConfig
from pruning.methods.registry import MethodConfig
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


class EngineRun(_Record):
    """Everything the pruning engine needs for one model x method: the engine object of a process is built from
    this record (see `tasks.prune.engine_for`) and keeps its finished blocks under `blocks_root`."""

    model: ModelArtifact
    calibration: CalibrationArtifact | None
    method: MethodConfig
    engine: EngineConfig
    blocks_root: str
    trust_remote_code: bool = False


class BlockOutcome(_Record):
    index: int
    reused: bool


class PrunedModel(_Record):
    path: str
    record: FileRef
