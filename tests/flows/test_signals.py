"""Ctrl-C and SIGTERM: a run stops within seconds with status 130 / 143 and one line, leaves no partial output,
marks its MLflow runs KILLED and its Prefect flow run Cancelled, and the same command then resumes from the cache."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml
from tiny_models import save_deep_checkpoint, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
PRUNEFLOW = Path(sys.executable).parent / "pruneflow"  # the installed command, supervisor included
STOP_SECONDS = 10


def start(arguments, cwd, environment):
    """The command in a session of its own, as a shell starts a foreground job: a signal to its process group
    reaches every process the terminal would reach."""
    return subprocess.Popen([str(PRUNEFLOW), *arguments], cwd=cwd, env=environment, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process, signum):
    """Signal the whole process group (as Ctrl-C does); return (status, stderr, seconds until it exited)."""
    signalled = time.monotonic()
    os.killpg(process.pid, signum)
    _, error = process.communicate(timeout=60)
    return process.returncode, error, time.monotonic() - signalled


def wait_for(condition, process, seconds=300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None and not condition():
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be stopped: {process.communicate()}"


def staging_folders(root: Path) -> list[Path]:
    return [path for path in root.rglob(".*") if ".partial-" in path.name or ".old-" in path.name]


def latest_flow_run_state(flow_name: str) -> str:
    database = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(database) as connection:
        row = connection.execute("select flow_run.state_name from flow_run join flow on flow.id = flow_run.flow_id "
                                 "where flow.name = ? order by flow_run.created desc limit 1", (flow_name,)).fetchone()
    return str(row[0])


def write_sweep_params(tmp_path, checkpoint, corpus, methods, sparsities, experiment):
    """params.yaml of a sweep over `methods` x `sparsities` on the tiny model; returns its runs folder."""
    runs = tmp_path / "runs"
    params = {
        "models": [{"name": "tiny", "source": str(checkpoint)}],
        "prune": {"methods": methods, "sparsity": sparsities},
        "calibration": {"source": str(corpus), "num_samples": 16, "seqlen": 64},
        "evaluation": [{"dataset": str(corpus), "seqlen": 64, "max_windows": 2}],
        "engine": {"device": "cpu"},
        "paths": {"runs": str(runs), "cache": str(tmp_path / "cache"), "artifacts": str(tmp_path / "artifacts")},
        "tracking": {"experiment": experiment},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return runs


def test_ctrl_c_stops_a_sweep_cleanly_and_the_same_command_resumes(tmp_path, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 600)
    runs = write_sweep_params(tmp_path, checkpoint, corpus, ["wanda", "sparsegpt"], [0.3, 0.4, 0.5, 0.6], "stopped")
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(REPO)}

    process = start(["sweep", "--params", "params.yaml"], tmp_path, environment)
    first = runs / "tiny" / "wanda-unstructured-0.3"
    wait_for(first.is_dir, process)
    status, error, seconds = stop(process, signal.SIGINT)

    assert status == 130 and seconds < STOP_SECONDS, (status, seconds, error)
    assert "pruneflow: stopped" in error and "Traceback" not in error
    assert not staging_folders(tmp_path)
    finished = sorted(path.name for path in (runs / "tiny").iterdir())
    assert len(finished) < 8, "the sweep went on after the signal"
    assert latest_flow_run_state("sweep") == "Cancelled"
    mlflow.set_tracking_uri(tracking)
    stopped = mlflow.search_runs(experiment_names=["stopped"], output_format="list")
    parents = [run for run in stopped if "mlflow.parentRunId" not in run.data.tags]
    assert [run.info.status for run in parents] == ["KILLED"]
    assert "RUNNING" not in {run.info.status for run in stopped}
    finished_at = {name: (runs / "tiny" / name / "pruneflow.json").stat().st_mtime_ns for name in finished}

    resumed = subprocess.run([str(PRUNEFLOW), "sweep", "--params", "params.yaml"], cwd=tmp_path, env=environment,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list((runs / "tiny").iterdir())) == 8
    # The combinations finished before the signal come from the artifact store: their output is not rewritten.
    assert {name: (runs / "tiny" / name / "pruneflow.json").stat().st_mtime_ns for name in finished} == finished_at
    assert latest_flow_run_state("sweep") == "Completed"


def test_sigterm_stops_prune_between_blocks_with_143_and_no_output(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    checkpoint = save_deep_checkpoint(tmp_path / "deep", tiny_tokenizer_dir)
    artifacts = tmp_path / "artifacts"
    process = start(["prune", "--model", str(checkpoint), "--method", "sparsegpt", "--sparsity", "0.5",
                     "--calibration", str(corpus), "--num-samples", "16", "--seqlen", "64", "--eval", str(corpus),
                     "--eval-seqlen", "32", "--eval-windows", "2", "--device", "cpu",
                     "--output", str(tmp_path / "pruned"), "--cache-dir", str(tmp_path / "cache"),
                     "--artifacts", str(artifacts)],
                    REPO, {**os.environ, "PYTHONPATH": str(REPO)})
    wait_for(lambda: len(list(artifacts.glob("blocks/*/block-*/block.json"))) >= 2, process)
    status, error, seconds = stop(process, signal.SIGTERM)

    assert status == 143 and seconds < STOP_SECONDS, (status, seconds, error)
    assert error.strip().splitlines()[-1].startswith("pruneflow: stopped") and "Traceback" not in error
    assert not (tmp_path / "pruned").exists() and not staging_folders(tmp_path)
    assert len(list(artifacts.glob("blocks/*/block-*/block.json"))) >= 2  # kept for the next run


def test_sigterm_stops_a_ten_thousand_combination_sweep_within_seconds(tmp_path, tiny_tokenizer_dir):
    """A grid of 10,000 combinations (5 methods x 2,000 sparsities, started with --allow-long) stops as fast as a
    small one: nothing is planned per combination before the first one runs."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 600)
    sparsities = [round(0.1 + step * 0.0002, 4) for step in range(2000)]
    runs = write_sweep_params(tmp_path, checkpoint, corpus, ["magnitude", "wanda", "sparsegpt", "admm", "apt"],
                              sparsities, "grid")
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
                   "PYTHONPATH": str(REPO)}

    process = start(["sweep", "--params", "params.yaml", "--allow-long"], tmp_path, environment)
    wait_for((runs / "tiny" / "magnitude-unstructured-0.1").is_dir, process)
    status, error, seconds = stop(process, signal.SIGTERM)

    assert status == 143 and seconds < STOP_SECONDS, (status, seconds, error)
    assert "pruneflow: stopped" in error and "Traceback" not in error
    assert not staging_folders(tmp_path)
    assert len(list((runs / "tiny").iterdir())) < 10_000
