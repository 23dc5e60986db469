"""The artifact store: every computed artifact of every driver, in one folder, under one key function.

  <root>/calibration/<key>/   calibration windows and manifest       key: model digest, calibration settings, text
  <root>/evaluation-text/<key>/  an evaluation text's token stream      key: tokenizer, evaluation text
  <root>/blocks/<key>/        the engine's finished blocks              key: model, calibration windows, method,
                                                                         engine settings, machine fields that change
                                                                         results (see pruning.blocks.store)
  <root>/models/<key>/        the pruned checkpoint assembled from them  key: the blocks' key
  <root>/evaluations/<key>/   a perplexity                              key: the weights' digest, evaluation text
                                                                         and settings, device
  <root>/zero-shot/<key>/     lm-eval accuracies                        key: the weights' digest, tasks and data

Every key is `ArtifactStore.key(kind, ...)`: a hash of its parts and of the `pruning` source digest, so an edit to
the code recomputes instead of serving old results. A step first looks for its keyed artifact and computes it only
when it is missing, so `pruneflow prune`, the Prefect flows and the DVC stages share whatever any of them finished,
and a killed run resumes. Everything is written to a temporary name and renamed into place. (Downloads, the fetched
wheels and converted GGUF checkpoints, are kept by their own sha256 under the cache folder, `cache_dir`.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from pruning.blocks.store import BlockStore
from pruning.io import code_digest, write_json

Record = TypeVar("Record", bound=BaseModel)
RESULT_FILE = "result.json"


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


class ArtifactStore:
    """Where artifacts live; `directory(kind, key)` is the one place a keyed artifact may be written."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @staticmethod
    def key(kind: str, *parts: Any) -> str:
        """The one key function: a stable hex digest of the artifact kind, its JSON-able parts (pydantic records,
        paths, plain values) and the `pruning` source digest."""
        payload = json.dumps(_jsonable([kind, *parts, code_digest()]), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def directory(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def blocks(self, key: str, description: BaseModel | None = None) -> BlockStore:
        """The block store of one run (see `pruning.blocks.store`)."""
        return BlockStore(self.directory("blocks", key), description)

    def cached(self, kind: str, key: str, record_type: type[Record], compute: Callable[[], Record]
               ) -> tuple[Record, bool]:
        """(the record stored under (kind, key), whether it was there), computed and stored first when missing."""
        path = self.directory(kind, key) / RESULT_FILE
        if path.is_file():
            return record_type.model_validate_json(path.read_text()), True
        record = compute()
        write_json(path, record.model_dump(mode="json"))
        return record, False
