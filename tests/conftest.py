"""Shared fixtures: offline settings, a tiny trained tokenizer, tiny random models of every family."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "1")
# Prefect: a fixed, git-ignored home whose database is migrated once, and fresh result storage per
# test session so that results cached by earlier sessions cannot leak into these tests.
os.environ["PREFECT_HOME"] = str(REPO_ROOT / ".cache" / "prefect-test")
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="prefect-results-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# Fetched packages and converted models are reused across test sessions (git-ignored).
TEST_CACHE = REPO_ROOT / ".cache" / "tests"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import save_tiny_tokenizer

    return save_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(autouse=True, scope="session")
def _prefect_without_heartbeat():
    """The flow heartbeat costs about 1 s per flow call; it can only be turned off in code."""
    import prefect.settings as settings

    with settings.temporary_settings(updates={settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
