"""Atomic file and directory writes, and content hashes.

Every artifact pruneflow writes goes to a temporary sibling first and is renamed into place, so an
interrupted or failed run never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import glob
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pruning.errors import ConfigError

PR_SET_PDEATHSIG = 1  # prctl(2)


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


def die_with_parent() -> None:
    """In a child process (Linux; elsewhere nothing): SIGKILL when its parent dies, so that a `kill -9` (or an OOM
    kill) of the parent stops the child too instead of leaving it running detached."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def current_umask() -> int:
    """The process umask: read from /proc where Linux shows it (no change to process state), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: Path, read_only: bool = False) -> None:
    """Give a staged file or folder the mode a plain `open`/`mkdir` would have given it under the umask:
    `tempfile` creates them owner-only (0600/0700), which would make a model unreadable by other users and
    serving containers. `read_only` drops the write bits (block-store files, hard-linked into models)."""
    full = 0o777 if path.is_dir() else 0o666
    if read_only:
        full &= 0o555
    os.chmod(path, full & ~current_umask())


def _staging_prefix(final_path: Path, kind: str) -> str:
    return f".{final_path.name}.{kind}-{os.getpid()}-"


def remove_stale_staging(final_path: Path) -> list[Path]:
    """Remove the staging folders and files (`.<name>.partial-<pid>-*`, `.<name>.old-<pid>-*`) that a killed
    process left next to `final_path`; return what was removed. Those of live processes are left alone."""
    removed = []
    for kind in ("partial", "old"):
        for path in Path(final_path).parent.glob(f".{glob.escape(Path(final_path).name)}.{kind}-*"):
            pid = path.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not process_is_alive(int(pid)):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    return renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def atomic_directory(final_path: Path) -> Iterator[Path]:
    """Yield a temporary directory next to `final_path`; put it in place on success.

    An existing `final_path` is swapped with the new content in one atomic step (where the filesystem allows;
    else two renames), so at every instant one complete copy is at `final_path`. On any exception the temporary
    directory is removed and `final_path` is left untouched. Staging folders that killed processes left are
    removed first.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final_path)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(final_path, "partial"), dir=final_path.parent))
    try:
        yield staging
        publish_mode(staging)
        if not final_path.exists():
            os.replace(staging, final_path)
        elif _exchange(staging, final_path):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old copy
        else:
            retired = Path(tempfile.mkdtemp(prefix=_staging_prefix(final_path, "old"), dir=final_path.parent))
            os.replace(final_path, retired / "content")
            os.replace(staging, final_path)
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(final_path: Path, read_only: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `final_path` for a writer to fill; rename it into place on success with the
    umask's mode (without write bits where `read_only`)."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final_path)
    descriptor, staging = tempfile.mkstemp(prefix=_staging_prefix(final_path, "partial"), dir=final_path.parent)
    os.close(descriptor)
    try:
        yield Path(staging)
        publish_mode(Path(staging), read_only)
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


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link where the file system allows one (no bytes copied), else a copy with its metadata."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_json(path: Path, payload: Any) -> None:
    """Write `payload` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def check_output_path(path: Path, field: str, directory: bool, overwrite: bool = False,
                      inputs: Mapping[str, Path | str | None] | None = None, replaced: bool | None = None) -> None:
    """Refuse, before any work, an output that cannot be written or would destroy something.

    `directory`: the output is a folder (a model, a report) that must not already hold files unless `overwrite`;
    else a file, which may be replaced but must not be a folder. A symbolic link is refused (the atomic swap would
    replace the link by a folder), and so is an output equal to, inside or around one of `inputs` (field -> path:
    the model, the calibration, the cache, the artifact store); "around" counts only where the output is `replaced`
    (default: a folder with `overwrite`; a cache is written into, never replaced). The nearest existing ancestor
    must be a folder in which a probe file can be created and removed (this refuses /proc, read-only mounts and
    missing permissions).
    Raises ConfigError naming `field`.
    """
    prefix = f"{field}: " if field else ""
    if str(path).strip() == "":
        raise ConfigError(f"{prefix}empty path; give the {'folder' if directory else 'file'} to write")
    path = Path(path).expanduser()
    if path.is_symlink():
        target = os.readlink(path)
        state = "a dangling symbolic link" if not path.exists() else "a symbolic link"
        raise ConfigError(f"{prefix}'{path}' is {state} (to '{target}'); give the real path"
                          f"{'' if not path.exists() else f' {path.resolve()}'} or remove the link")
    resolved = path.resolve()
    if directory and (resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents):
        raise ConfigError(f"{prefix}'{path}' is the working folder or one of its parents; give a new folder")
    for input_field, input_path in (inputs or {}).items():
        if input_path is not None and str(input_path).strip():
            _refuse_overlap(path, resolved, prefix, input_field, Path(input_path).expanduser().resolve(),
                            directory and overwrite if replaced is None else replaced)
    if path.exists():
        if directory and not path.is_dir():
            raise ConfigError(f"{prefix}'{path}' exists and is a file; give a folder path")
        if not directory and path.is_dir():
            raise ConfigError(f"{prefix}'{path}' is a folder; give a file path (e.g. {path / 'result.json'})")
        if directory and not overwrite and any(path.iterdir()):
            raise ConfigError(f"{prefix}'{path}' exists and is not empty; choose a new folder, or pass --overwrite "
                             "to replace it (the old copy stays until the new one is complete)")
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{prefix}'{path}' cannot be created: '{ancestor}' is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{prefix}'{path}' cannot be created: no write permission in '{ancestor}'")
    _probe_writable(ancestor, path, prefix)


def _refuse_overlap(path: Path, resolved: Path, prefix: str, input_field: str, input_path: Path,
                    replaced: bool) -> None:
    """An output must not be an input, lie inside one (a pruned model in the model's folder or the cache), or hold
    one (--overwrite of a folder around the model would delete it)."""
    if resolved == input_path:
        raise ConfigError(f"{prefix}'{path}' is the {input_field} ('{input_path}'); write to another folder")
    if input_path in resolved.parents:
        raise ConfigError(f"{prefix}'{path}' lies inside the {input_field} ('{input_path}'); write outside it")
    if replaced and resolved in input_path.parents:
        raise ConfigError(f"{prefix}'{path}' holds the {input_field} ('{input_path}'), which replacing it would "
                          "delete; write to another folder")


def _probe_writable(folder: Path, path: Path, prefix: str) -> None:
    """Create and remove an empty file in `folder`: what permission bits cannot tell (a read-only mount, /proc,
    a full inode table) fails here, before the work, instead of at the final write."""
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".pruneflow-probe-", dir=folder)
    except OSError as error:
        raise ConfigError(f"{prefix}'{path}' cannot be written: creating a file in '{folder}' fails "
                          f"({error.strerror}); give a folder on a writable file system") from None
    os.close(descriptor)
    os.unlink(probe)


def check_free_space(path: Path, needed_bytes: int, field: str, what: str) -> None:
    """Refuse before the work when the file system that will hold `path` has less than `needed_bytes` free."""
    ancestor = Path(path).expanduser().resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    free = shutil.disk_usage(ancestor).free
    if free < needed_bytes:
        raise ConfigError(f"{field}: {what} needs about {needed_bytes / 2**20:,.1f} MiB but '{ancestor}' has "
                          f"{free / 2**20:,.1f} MiB free; free some space or give a folder on a larger disk")


_HELD_OUTPUTS: set[Path] = set()  # the outputs this process holds the lock of


@contextlib.contextmanager
def exclusive_output(path: Path, field: str,
                     advice: str = "wait for it to finish, or write to another folder") -> Iterator[None]:
    """Hold an exclusive lock on output `path` (a `.<name>.lock` file beside it) while a run writes it: a second
    writer of the same output fails at once, naming the first one's process. The lock file is removed on release.

    flock(2) on the lock file; after locking, the file is checked to still be the one at the path (a releasing
    writer may have just removed it), else locking starts again."""
    path = Path(path).expanduser().resolve()
    if path in _HELD_OUTPUTS:  # this process holds it already (a driver locks before Prefect, the job again inside)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    while True:
        handle = open(lock_path, "a+")  # noqa: SIM115 (held open across the yield: the lock lives with it)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(f"{field}: '{path}' is being written by another pruneflow run (process {holder}); "
                              f"{advice}") from None
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        handle.close()
    _HELD_OUTPUTS.add(path)
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        _HELD_OUTPUTS.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        handle.close()
