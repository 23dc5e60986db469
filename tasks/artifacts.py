"""The content-addressed artifact store: the one cache of every flow task.

Heavy artifacts (calibration sets, pruned models, evaluation results) live as files under
`<root>/<kind>/<key>/`, where the key is a hash of everything that determines the content, the `pruning`
source digest included; pruned blocks live in the engine's block store under `<root>/blocks`. A task first
looks for its keyed artifact and computes it only when it is missing, so a second identical run reuses
everything and a killed run resumes. Prefect's own result cache is off (no pickles): tasks exchange only
small records of paths and sha256 digests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pruning.io import code_digest, sha256_file, write_json

DEFAULT_ARTIFACT_ROOT = Path(".pruneflow/artifacts")


class FileRef(BaseModel):
    """A file and the sha256 of its bytes."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRef:
        return cls(path=str(path), sha256=sha256_file(path))


class ArtifactStore(BaseModel):
    """Where artifacts live; `directory(kind, key)` is the one place a keyed artifact may be written."""

    model_config = ConfigDict(frozen=True)

    root: Path = DEFAULT_ARTIFACT_ROOT

    def directory(self, kind: str, key: str) -> Path:
        return self.root.resolve() / kind / key

    @property
    def blocks(self) -> Path:
        """The engine's block store (see `pruning.blocks.store`)."""
        return self.root.resolve() / "blocks"

    def cached_json(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """The JSON result stored under (kind, key), computed and stored first when it is missing."""
        path = self.directory(kind, key) / "result.json"
        if not path.is_file():
            write_json(path, compute())
        return json.loads(path.read_text())


DEFAULT_STORE = ArtifactStore()


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def content_key(*parts: Any) -> str:
    """A stable hex key for JSON-able parts (pydantic records, paths, plain values) and the `pruning` source."""
    payload = json.dumps(_jsonable([*parts, code_digest()]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
