"""Quiet, offline, project-local defaults for Prefect, MLflow and transformers; values the user set win."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' per-load bars; pruneflow shows its own per block
    "TRANSFORMERS_VERBOSITY": "error",
}


def configure_environment(project_root: Path | None = None) -> None:
    """Embedded by default: Prefect state under `<project>/.prefect` (created: Prefect will not create
    its parents), no telemetry; a server configured through PREFECT_API_URL is used as it is."""
    root = (project_root or Path.cwd()).resolve()
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
