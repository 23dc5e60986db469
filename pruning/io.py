"""Atomic file and directory writes, and content hashes.

Every artifact pruneflow writes goes to a temporary sibling first and is renamed into place, so an
interrupted or failed run never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the `pruning` package's source files (path and bytes, in path order): part of every cache key,
    so that a run after an edit to a solver recomputes instead of serving results of the old code."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.yaml")]):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(final_path: Path) -> Iterator[Path]:
    """Yield a temporary directory next to `final_path`; rename it into place on success.

    An existing `final_path` is replaced only after the new content is complete.
    On any exception the temporary directory is removed and `final_path` is left untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent))
    try:
        yield staging
        if final_path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.old-", dir=final_path.parent))
            os.replace(final_path, retired / "content")
            os.replace(staging, final_path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final_path` for a writer to fill; rename it into place on success."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent)
    os.close(descriptor)
    try:
        yield Path(staging)
        os.replace(staging, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


@contextlib.contextmanager
def atomic_file(final_path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to `final_path` for writing; rename it into place on success."""
    with atomic_path(final_path) as staging, open(staging, mode) as handle:
        yield handle


def write_json(path: Path, payload: Any) -> None:
    """Write `payload` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
