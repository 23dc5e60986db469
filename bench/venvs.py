"""Separate virtual environments for the benchmarks that compare pruneflow's output with other stacks (transformers
4, OpenVINO, llm-compressor): made once under .pruneflow/venvs (ignored by git), torch 2.13.0 from the local file
first, so that nothing pulls a CUDA build, then the stack's own packages with torch held at that version."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".pruneflow" / "venvs"
TORCH = "torch==2.13.0"


def make_venv(directory: Path, requirements: list[str], without: tuple[str, ...] = ()) -> Path:
    """The venv's python, after creating it with `requirements` installed if it does not exist yet, and the packages
    in `without` removed again (PyPI's torchvision, pulled in by some stacks, fails to import beside torch 2.13.0's
    local build: 'operator torchvision::nms does not exist')."""
    python = directory / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(f"{TORCH}\n")
        constraints.flush()
        subprocess.run([*pip, "-c", constraints.name, *requirements], check=True)
    if without:
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", *without], check=True)
    return python


def run_json(python: Path | str, script: str, *arguments: str) -> dict:
    """Run `script` (source text) in another interpreter; its last stdout line is JSON."""
    import json

    with tempfile.NamedTemporaryFile("w", suffix=".py") as handle:
        handle.write(script)
        handle.flush()
        completed = subprocess.run([str(python), handle.name, *arguments], check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])
