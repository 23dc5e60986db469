"""The DVC pipeline with real DVC (git + dvc init in a temp dir) on a tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_models import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def run(command, cwd, environment):
    completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{' '.join(command)}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed.stdout + completed.stderr


@pytest.fixture()
def dvc_project(tmp_path, tiny_tokenizer_dir, shared_data):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    project = tmp_path / "project"
    project.mkdir()
    corpus = project / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    params = {
        "models": [{"name": "tiny", "source": str(checkpoint)}],
        "prune": {"methods": ["wanda", "sparsegpt"], "sparsity": 0.5},
        "calibration": {"source": "corpus.txt", "num_samples": 4, "seqlen": 32},
        "evaluation": [{"dataset": "corpus.txt", "seqlen": 32, "max_windows": 2}],
        "zero_shot": {"tasks": ["arc_easy", "rte"], "data_dir": str(shared_data), "limit": 3},
        "bench": {"prefill_batches": [1], "prefill_tokens": 16, "decode_batches": [1], "decode_new_tokens": 2,
                  "gemm_layers": 1, "min_run_time": 0.01, "max_run_time": 0.05},
        "engine": {"device": "cpu"},
        "paths": {"cache": str(tmp_path / "cache")},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    environment = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
                   "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
                   "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    run(["git", "init", "-q"], project, environment)
    run(["dvc", "init", "-q"], project, environment)
    run(["dvc", "config", "core.analytics", "false"], project, environment)
    return project, environment


def test_dvc_repro_then_nothing_to_reproduce_then_an_experiment(dvc_project):
    project, environment = dvc_project
    run(["dvc", "repro"], project, environment)
    wanda = json.loads((project / "metrics" / "tiny" / "wanda" / "wanda-unstructured-0.5.json").read_text())
    assert wanda["sparsity"] == pytest.approx(0.5) and wanda["perplexity"]["corpus_txt_32x2"] > 1
    row = json.loads((project / "evaluations" / "tiny" / "wanda" / "wanda-unstructured-0.5.json").read_text())
    assert row["zero_shot"]["tasks"]["rte"]["documents"] == 3 and row["inputs"]["calibration"]["windows_sha256"]
    # The DVC stages ran the same steps into the same artifact store as `prune` and the sweep.
    assert len(list((project / ".pruneflow" / "artifacts" / "blocks").iterdir())) == 2
    table = (project / "reports" / "results.md").read_text()
    assert table.count("| sparsegpt |") == 1 and "cpu csr: " in table and "lm-eval 0.4.13" in table
    speed = json.loads((project / "speed" / "tiny" / "sparsegpt.json").read_text())
    assert speed["devices"]["cpu"]["models"][0]["forms"]["csr"]["prefill"]["1x16"]["median_s"] > 0
    assert (project / "reports" / "speedups.png").is_file()
    assert (project / "dvc.lock").is_file()

    second = run(["dvc", "repro"], project, environment)
    assert "Data and pipelines are up to date" in second
    status = run(["dvc", "status"], project, environment)
    assert "Data and pipelines are up to date" in status

    run(["git", "add", "-A"], project, environment)
    run(["git", "commit", "-qm", "baseline"], project, environment)
    run(["dvc", "exp", "run", "-S", "prune.sparsity=0.6"], project, environment)
    experiment = json.loads((project / "metrics" / "tiny" / "wanda" / "wanda-unstructured-0.6.json").read_text())
    assert experiment["sparsity"] == pytest.approx(0.6, abs=1e-3)  # floor(0.6·numel) weights per matrix

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project, environment))
    files = next(iter(shown.values()))["data"]
    assert "metrics/tiny/wanda/wanda-unstructured-0.6.json" in files
    # One flat row per combination: every method's file has the same keys, so `dvc metrics show` shares columns.
    columns = {json.dumps(sorted(entry["data"])) for entry in files.values()}
    assert len(columns) <= 2, columns  # the pruned combinations' keys, and the dense model's (no engine time)
    table = run(["dvc", "metrics", "show"], project, environment)
    assert len(table.splitlines()[0].split()) <= 8, table.splitlines()[0]
    plots = run(["dvc", "plots", "show", "--json"], project, environment)
    assert "reports/perplexity.csv" in plots and "reports/block_errors.csv" in plots
    assert "reports/perplexity_vs_sparsity.png" in plots and "reports/speedups.png" in plots


def test_the_committed_dvc_lock_was_made_from_the_committed_params():
    """`dvc status` on a fresh clone must not report params.yaml as modified: every params value dvc.lock recorded
    equals the one in params.yaml (regenerate with `make repro` after changing params.yaml)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    stale = [f"{stage}: {key}" for stage, entry in stages.items()
             for key, value in entry.get("params", {}).get("params.yaml", {}).items() if params.get(key) != value]
    assert not stale, f"dvc.lock records params that params.yaml no longer has: {stale}"
    recorded = {stage.split("@")[0] for stage in stages}
    assert recorded >= {"fetch", "calibrate", "prune", "baseline", "evaluate", "report"}
