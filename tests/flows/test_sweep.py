"""The `sweep` flow with real Prefect, a real MLflow store (sqlite in a temp dir) and a real MLflow server."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from tiny_models import save_tiny_checkpoint

from flows.cli import main
from flows.params import load_params
from flows.sweep import sweep_with_task_runner


@pytest.fixture()
def project(tmp_path, monkeypatch, tiny_tokenizer_dir):
    """A project folder with a tiny model, a corpus and its own MLflow store; the sweep runs from it."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    params = {
        "models": [{"name": "tiny", "source": str(checkpoint)}],
        "prune": {"methods": ["wanda", "sparsegpt"], "sparsity": 0.5},
        "calibration": {"source": str(corpus), "num_samples": 4, "seqlen": 32},
        "evaluation": [{"dataset": str(corpus), "seqlen": 32, "max_windows": 2}],
        "engine": {"device": "cpu"},
        "paths": {"runs": str(tmp_path / "runs"), "cache": str(tmp_path / "cache"),
                  "artifacts": str(tmp_path / "artifacts")},
        "tracking": {"experiment": "sweep-test"},
    }
    return tmp_path, params


def write_params(directory, params, name="params.yaml"):
    path = directory / name
    path.write_text(yaml.safe_dump(params))
    return path


def printed_row(printed, method, pattern, target):
    """A row of the results table the sweep prints (one model: its name is in the title, cells apart by spaces)."""
    return re.search(rf"^\s*{re.escape(method)}\s+{re.escape(pattern)}\s+{re.escape(target)}\s", printed, re.MULTILINE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_sweep_logs_parent_and_child_runs_that_a_real_mlflow_server_serves(project, capfd, shared_data):
    directory, params = project
    params = {**params, "tracking": {"experiment": "sweep-test", "register_models": True},
              "zero_shot": {"tasks": ["piqa", "winogrande"], "data_dir": str(shared_data), "limit": 4},
              "bench": {"devices": ["cpu", "cuda"], "prefill_batches": [1], "prefill_tokens": 16, "decode_batches": [1],
                        "decode_new_tokens": 2, "gemm_layers": 1, "min_run_time": 0.01, "max_run_time": 0.05,
                        "in_sweep": True}}
    assert main(["sweep", "--params", str(write_params(directory, params))]) == 0
    captured = capfd.readouterr()  # file-descriptor level: the live rows go to the original fd 2, not sys.stderr
    printed = captured.out
    assert printed_row(printed, "wanda", "unstructured", "0.5") and printed_row(printed, "dense", "-", "0")
    assert "tiny  speed  done  tiny.json" in captured.err, "the speed stage has a live row of its own"
    assert f"Report: {directory / 'runs' / 'report' / 'index.html'}" in printed
    # Output below Python (here git's complaint that the project is no repository, from the MLflow tags) went to the
    # run's log, not the terminal. (Python logging handlers write to pytest's capture in this in-process test.)
    logs = list((directory / "runs" / "logs").glob("sweep-*.log"))
    assert len(logs) == 1 and "not a git repository" in logs[0].read_text() and "not a git" not in printed

    # The comparison report: one row per combination, with zero-shot average, parameters and speed-ups.
    report = directory / "runs" / "report"
    table = (report / "results.md").read_text()
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| tiny |")}
    assert set(rows) == {"dense", "wanda", "sparsegpt"}
    assert "cpu zeros: " in rows["wanda"] and "cpu csr: " in rows["wanda"]
    assert "lm-eval 0.4.13, first 4 documents per task" in table
    speed = json.loads((directory / "runs" / "speed" / "tiny.json").read_text())
    assert "no CUDA device" in speed["devices"]["cuda"]["skipped"] or "models" in speed["devices"]["cuda"]
    for name in ("perplexity_vs_sparsity.png", "block_errors.png", "speedups.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    port = free_port()
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"], "--workers", "1"],
                              env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not answer /health"
                time.sleep(1)
        experiments = post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
        experiment_id = next(item["experiment_id"] for item in experiments if item["name"] == "sweep-test")
        runs = post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/registered-models/search?max_results=10",
                                    timeout=30) as response:
            registered = json.loads(response.read())["registered_models"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert sorted(model["name"] for model in registered) == ["tiny-sparsegpt-unstructured-0.5",
                                                              "tiny-wanda-unstructured-0.5"]
    # Registered as code plus the HF directory: nothing pickled, and it loads and predicts.
    import mlflow.pyfunc

    assert not list((directory / "mlruns").rglob("*.pkl"))
    completions = mlflow.pyfunc.load_model("models:/tiny-wanda-unstructured-0.5/1").predict(["Pruning removes"])
    assert len(completions) == 1 and isinstance(completions[0], str)

    def tags(run):
        return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}

    parents = [run for run in runs if "mlflow.parentRunId" not in tags(run)]
    children = [run for run in runs if "mlflow.parentRunId" in tags(run)]
    assert len(parents) == 1 and len(children) == 3
    parent_artifacts = directory / "mlruns" / parents[0]["info"]["run_id"] / "artifacts" / "report"
    assert (parent_artifacts / "results.md").is_file() and (parent_artifacts / "speedups.png").is_file()
    assert (parent_artifacts / "index.html").is_file()
    assert tags(parents[0])["report"].endswith("/report/index.html")
    for child in children:
        metrics = {metric["key"]: metric["value"] for metric in child["data"]["metrics"]}
        assert {"zeroshot.piqa.acc", "zeroshot.piqa.acc_norm", "zeroshot.winogrande.acc"} <= set(metrics)
        assert metrics["zeroshot.average_acc"] == pytest.approx(
            (metrics["zeroshot.piqa.acc"] + metrics["zeroshot.winogrande.acc"]) / 2)
        assert tags(child)["lm_eval_version"] == "0.4.13" and tags(child)["zeroshot.limit"] == "4"
    assert all(tags(child)["mlflow.parentRunId"] == parents[0]["info"]["run_id"] for child in children)
    pruned = [child for child in children if any(p["key"] == "method.method" for p in child["data"]["params"])]
    assert {next(p["value"] for p in child["data"]["params"] if p["key"] == "method.method")
            for child in pruned} == {"wanda", "sparsegpt"}
    for child in pruned:
        metrics = {metric["key"]: metric["value"] for metric in child["data"]["metrics"]}
        assert metrics["decoder_linear_sparsity"] == pytest.approx(0.5)
        assert any(key.startswith("ppl.token.") and "seqlen32" in key for key in metrics)
        assert "block_relative_error" in metrics and "seconds.prune" in metrics
        assert metrics["layer_sparsity"] == pytest.approx(0.5)  # the last layer's, a history over all layers
        history = mlflow.MlflowClient().get_metric_history(child["info"]["run_id"], "layer_sparsity")
        assert len(history) > 1 and sorted(metric.step for metric in history) == list(range(len(history)))
        contexts = {item["tags"][0]["value"] if item.get("tags") else None
                    for item in child["inputs"]["dataset_inputs"]}
        assert {"calibration", "evaluation"} <= contexts
        assert all(item["dataset"]["digest"] for item in child["inputs"]["dataset_inputs"])
        assert tags(child)["pruneflow_version"] and tags(child)["git_commit"]
        artifacts = directory / "mlruns"
        assert (artifacts / child['info']['run_id'] / "artifacts" / "plots" / "block_errors.png").is_file()


@pytest.mark.parametrize("change, message", [
    ({"prune": {"methods": ["obs-magic"], "sparsity": 0.5}}, "prune.methods: unknown method obs-magic"),
    ({"prune": {"methods": ["wanda"], "sparsity": -0.2}}, "prune.sparsity: sparsity -0.2 is outside [0, 1)"),
    ({"models": []}, "models: Tuple should have at least 1 item"),
    ({"evaluation": [{"dataset": "/no/such/file.jsonl"}]}, "evaluation.0.dataset: '/no/such/file.jsonl'"),
    ({"prune": {"methods": ["sparsegpt"], "options": {"sparsgpt": {"blocksize": 64}}}},
     "prune.options: options for unknown method sparsgpt (misspelled?)"),
    ({"models": [{"name": "a", "source": "hf://org/model"}]}, "models.0: source: hub source 'hf://org/model' names no"),
    ({"paths": {"runs": "params.yaml/runs"}}, "paths.runs: 'params.yaml/runs' cannot be created: "),
])
def test_bad_params_fail_before_any_model_load_with_one_line_per_problem(project, capsys, change, message):
    directory, params = project
    status = main(["sweep", "--params", str(write_params(directory, {**params, **change}))])
    error = capsys.readouterr().err
    assert status == 2
    assert message in error
    assert not (directory / "runs").exists() and not (directory / "cache").exists()


def test_a_window_longer_than_the_models_context_is_refused_before_the_flow(project, capsys):
    directory, params = project
    longer = {**params, "calibration": {**params["calibration"], "seqlen": 1000}}
    assert main(["sweep", "--params", str(write_params(directory, longer))]) == 2
    assert "calibration.seqlen: 1000 exceeds the model's context of 256 tokens" in capsys.readouterr().err
    assert not (directory / "runs").exists()


def test_two_models_of_the_same_name_are_refused(project, capsys):
    directory, params = project
    twice = {**params, "models": params["models"] * 2}
    assert main(["sweep", "--params", str(write_params(directory, twice))]) == 2
    assert "models: model name tiny appears more than once" in capsys.readouterr().err


def test_several_params_problems_are_listed_together(project, capsys):
    directory, params = project
    bad = {**params, "models": [], "prune": {"methods": ["nope"], "sparsity": 2.0}}
    assert main(["sweep", "--params", str(write_params(directory, bad))]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pruneflow: error:")]
    assert len(lines) == 3


def test_two_combinations_run_concurrently_on_a_dask_local_cluster(project):
    directory, params = project
    params = {**params, "dense_baseline": False, "dask": {"enabled": True, "workers": 2}}
    result = sweep_with_task_runner(load_params(write_params(directory, params)))
    assert [combination.method for combination in result.combinations] == ["wanda", "sparsegpt"]
    first, second = result.combinations
    assert first.started_at < second.finished_at and second.started_at < first.finished_at
    # Each of the 2 workers gets its share of the cores, not torch's default of all of them.
    assert first.threads == second.threads == max(1, (os.cpu_count() or 1) // 2)
    assert (directory / "runs" / "tiny" / "sparsegpt-unstructured-0.5" / "model.safetensors.index.json").is_file()


def test_the_new_methods_run_from_params_with_their_options_and_no_other_plumbing(project, capsys):
    directory, params = project
    params = {**params, "dense_baseline": False,
              "prune": {"methods": ["oats", "apt", "osscar", "admm"], "sparsity": 0.5,
                        "options": {"oats": {"rank_ratio": 0.25, "iterations": 5}, "apt": {"selection": "row"},
                                    "osscar": {"attention_groups": 1}, "admm": {"iterations": 10,
                                                                                "mask_iterations": 5}},
                        # One method's engine settings: dense targets and block reconstruction for admm only.
                        "engine": {"admm": {"targets": "dense", "batch_size": 2,
                                            "reconstruction": {"epochs": 1, "holdout": 0.5}}}}}
    assert main(["sweep", "--params", str(write_params(directory, params))]) == 0
    printed = capsys.readouterr().out
    assert printed_row(printed, "oats", "unstructured", "0.5") and printed_row(printed, "apt", "unstructured", "0.5")
    assert printed_row(printed, "osscar", "structured", "0.5")
    osscar_record = json.loads((directory / "runs" / "tiny" / "osscar-structured-0.5" / "pruneflow.json").read_text())
    assert osscar_record["structured"]["removed_groups_per_block"] == {"attention": 1, "mlp": 64}
    oats_run = directory / "runs" / "tiny" / "oats-unstructured-0.5"
    record = json.loads((oats_run / "pruneflow.json").read_text())
    assert record["config"]["method"]["rank_ratio"] == 0.25
    assert (oats_run / "factored" / "model.safetensors.index.json").is_file()
    apt_record = json.loads((directory / "runs" / "tiny" / "apt-unstructured-0.5" / "pruneflow.json").read_text())
    assert apt_record["config"]["method"]["selection"] == "row"
    assert apt_record["decoder_linear_sparsity"] == pytest.approx(0.5)
    assert apt_record["config"]["engine"]["targets"] == "pruned" and apt_record["engine"]["reconstruction"] == []
    admm_record = json.loads((directory / "runs" / "tiny" / "admm-unstructured-0.5" / "pruneflow.json").read_text())
    assert admm_record["config"]["engine"]["targets"] == "dense"
    assert [entry["epochs"] for entry in admm_record["engine"]["reconstruction"]] == [1.0, 1.0]
    assert all("dense_target_shift" in layer["details"] for layer in admm_record["engine"]["layers"])
    assert admm_record["decoder_linear_sparsity"] == pytest.approx(0.5)
    # The results tables name what a combination adds to its method's layer objective.
    assert printed_row(printed, "admm *1", "unstructured", "0.5")
    assert "*1: admm + dense targets + block reconstruction" in printed
    table = (directory / "runs" / "report" / "results.md").read_text()
    assert "| tiny | admm + dense targets + block reconstruction | unstructured |" in table
    assert "| tiny | apt | unstructured |" in table
