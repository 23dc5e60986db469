"""Prefect start-up overhead per flow, in the ephemeral (no server) mode pruneflow uses by default.

Measures, in fresh processes: the first flow call on a new PREFECT_HOME (database migrations), the
first flow call on an existing PREFECT_HOME, and later calls in the same process, for a flow with
one trivial task. Writes JSON.

  .venv/bin/python bench/prefect_overhead.py --output bench/results/prefect_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from prefect import flow, task
imported = time.perf_counter() - started

@task
def one() -> int:
    return 1

@flow
def trivial() -> int:
    return one()

calls = []
for _ in range(4):
    begin = time.perf_counter()
    trivial()
    calls.append(time.perf_counter() - begin)
print(json.dumps({"import_seconds": imported, "flow_call_seconds": calls}))
"""


def measure(home: Path) -> dict:
    environment = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                   "DO_NOT_TRACK": "true"}
    environment.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", CHILD], env=environment, capture_output=True, text=True,
                               check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {**result, "process_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("bench/results/prefect_overhead.json"))
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory) / "prefect-home"
        home.mkdir()
        new_home = measure(home)
        existing_home = measure(home)
    result = {"prefect": __import__("prefect").__version__, "mode": "ephemeral server, heartbeat on",
              "new_prefect_home": new_home, "existing_prefect_home": existing_home}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
