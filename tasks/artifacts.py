"""The content-addressed artifact store and the small records tasks pass to each other.

Heavy artifacts (activations, statistics, solved weights, models) live as files under
`<root>/<kind>/<key>/`, where the key is a hash of everything that determines the content. Tasks
exchange only records holding paths and sha256 digests, so a Prefect cache key built from a task's
parameters covers the content of every file it reads (and never the run id).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pruning.io import sha256_file

DEFAULT_ARTIFACT_ROOT = Path(".pruneflow/artifacts")


class FileRef(BaseModel):
    """A file and the sha256 of its bytes."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileRef:
        return cls(path=str(path), sha256=sha256_file(path))

    def exists(self) -> bool:
        return Path(self.path).is_file()


class ArtifactStore(BaseModel):
    """Where artifacts live; `directory(kind, key)` is the one place a keyed artifact may be written."""

    model_config = ConfigDict(frozen=True)

    root: Path = DEFAULT_ARTIFACT_ROOT

    def directory(self, kind: str, key: str) -> Path:
        return self.root.resolve() / kind / key


DEFAULT_STORE = ArtifactStore()


def references_missing_files(record: Any) -> bool:
    """True when a record (or any record nested in it) names a file that no longer exists."""
    if isinstance(record, FileRef):
        return not record.exists()
    if isinstance(record, BaseModel):
        return any(references_missing_files(getattr(record, name)) for name in type(record).model_fields)
    if isinstance(record, (list, tuple)):
        return any(references_missing_files(item) for item in record)
    return False


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
    """A stable hex key for JSON-able parts (pydantic records, paths, plain values)."""
    payload = json.dumps(_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def task_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key: the task's name and source plus its parameters (records carry file digests).

    Unlike Prefect's default policy this leaves out the flow run id, so a later run reuses results.
    """
    task = context.task
    return f"{task.name}-{content_key(inspect.getsource(task.fn), parameters)}"
