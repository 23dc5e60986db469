"""The `compress` flow with real Prefect (ephemeral server): cross-run caching and resume after SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from safetensors.torch import load_file
from tiny_models import save_tiny_checkpoint

from flows.cli import build_parser, job_from_arguments
from flows.compress import compress
from pruning.block_files import statistics_forward_seconds
from pruning.config import PruneJob
from tasks.artifacts import ArtifactStore

REPO = Path(__file__).resolve().parents[2]


def task_runs(flow_run_id, expected: int) -> dict[str, str]:
    """Task run name -> final state name ('Cached' for a cache hit, 'Completed' when it executed).

    Prefect 3 records task-run states on the server from events, asynchronously: flush this process's
    events, then poll until all `expected` runs exist and each has a final state.
    """
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = {run.name: run.state_name for run in runs}
        settled = all(state in ("Cached", "Completed") for state in states.values())
        if (settled and len(states) == expected) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def executed(runs: dict[str, str]) -> list[str]:
    return sorted(name for name, state in runs.items() if state != "Cached")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    return path


def make_job(checkpoint, corpus, directory, **overrides):
    fields = {"model": str(checkpoint), "method": {"method": "sparsegpt", "sparsity": 0.5},
              "calibration": {"source": str(corpus), "num_samples": 4, "seqlen": 32},
              "evaluation": [{"dataset": str(corpus), "seqlen": 32, "max_windows": 2}],
              "output_dir": str(directory / "pruned"), "cache_dir": str(directory / "cache"),
              "evaluate_dense": True, "engine": {"device": "cpu"}}
    return PruneJob.model_validate({**fields, **overrides})


def test_second_identical_run_executes_nothing_and_changed_text_recomputes(tmp_path, corpus, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    store = ArtifactStore(root=tmp_path / "artifacts")
    job = make_job(checkpoint, corpus, tmp_path)

    first = compress(job, store, return_state=True)
    first_runs = task_runs(first.state_details.flow_run_id, expected=22)
    # 2 blocks x 4 stages x (statistics + solve), and fetch, calibrate, embed, reassemble, 2 evaluations.
    assert len(executed(first_runs)) == 22
    second = compress(job, store, return_state=True)
    second_executed = executed(task_runs(second.state_details.flow_run_id, expected=22))
    assert [name.rsplit("-", 1)[0] for name in second_executed] == ["fetch_model"]
    assert second.result()["perplexity"] == first.result()["perplexity"]
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    statistics_seconds = sum(statistics_forward_seconds(path) for path in
                             (tmp_path / "artifacts" / "statistics").glob("*/statistics.safetensors"))
    assert statistics_seconds > 0 and record["engine"]["forward_seconds"] > statistics_seconds

    weights = (tmp_path / "pruned" / "model.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "artifacts")  # Prefect's cache now points at files that are gone
    repaired = compress(job, store, return_state=True)
    assert repaired.result()["perplexity"] == first.result()["perplexity"]
    assert (tmp_path / "pruned" / "model.safetensors").read_bytes() == weights

    changed = tmp_path / "changed.txt"
    changed.write_text(corpus.read_text().replace("network", "model"))
    third = compress(make_job(checkpoint, changed, tmp_path), store, return_state=True)
    third_executed = executed(task_runs(third.state_details.flow_run_id, expected=22))
    assert any(name.startswith("build_calibration") for name in third_executed)
    assert any(name.startswith("solve_block-1-3") for name in third_executed)


def compress_command(checkpoint, corpus, directory):
    return [sys.executable, "-m", "flows.cli", "compress", "--model", str(checkpoint), "--method", "sparsegpt",
            "--sparsity", "0.5", "--calibration", str(corpus), "--num-samples", "16", "--seqlen", "64",
            "--eval", str(corpus), "--eval-seqlen", "32", "--eval-windows", "2", "--device", "cpu",
            "--output", str(directory / "pruned"), "--cache-dir", str(directory / "cache"),
            "--artifacts", str(directory / "artifacts")]


def test_a_run_killed_mid_way_resumes_at_the_unfinished_block_with_bit_identical_weights(
        tmp_path, corpus, tiny_tokenizer_dir):
    import tiny_models
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=tiny_models.VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    tiny_models.FAMILY_CONFIGS["llama-deep"] = config
    checkpoint = save_tiny_checkpoint(tmp_path / "deep", tiny_tokenizer_dir, family="llama-deep")
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    killed = tmp_path / "killed"
    process = subprocess.Popen(compress_command(checkpoint, corpus, killed), env=environment, cwd=REPO,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    finished_blocks = 0
    while time.monotonic() < deadline and process.poll() is None:
        finished_blocks = len(list((killed / "artifacts" / "blocks").glob("*/outputs.safetensors")))
        if finished_blocks >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the flow and its temporary Prefect server
    process.wait()
    assert 3 <= finished_blocks < 8
    assert not (killed / "pruned").exists()

    # Resume in this process: a subprocess's temporary Prefect server can stop before it has recorded the
    # last task-run states, while this process's server stays up until every state is read back.
    arguments = build_parser().parse_args(compress_command(checkpoint, corpus, killed)[3:])
    resumed = compress(job_from_arguments(arguments), ArtifactStore(root=Path(arguments.artifacts)),
                       return_state=True)
    assert resumed.is_completed()
    # 8 blocks x 4 stages x (statistics + solve), and fetch, calibrate, embed, reassemble, 1 evaluation.
    runs = task_runs(resumed.state_details.flow_run_id, expected=69)
    assert all(runs[f"solve_block-0-{stage}"] == "Cached" for stage in range(4))
    assert all(runs[f"solve_block-1-{stage}"] == "Cached" for stage in range(4))
    assert runs["solve_block-7-3"] != "Cached"

    uninterrupted = tmp_path / "uninterrupted"
    complete = subprocess.run(compress_command(checkpoint, corpus, uninterrupted), env=environment, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert complete.returncode == 0, complete.stderr[-2000:]
    resumed_weights = load_file(str(killed / "pruned" / "model.safetensors"))
    reference_weights = load_file(str(uninterrupted / "pruned" / "model.safetensors"))
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert resumed_weights[name].equal(tensor), name


def test_oats_through_the_flow_exports_a_factored_checkpoint_equal_to_the_merged_model(
        tmp_path, corpus, tiny_tokenizer_dir):
    import torch
    from tiny_models import random_ids
    from transformers import AutoModelForCausalLM

    from pruning import load_compressed

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    job = make_job(checkpoint, corpus, tmp_path, method={"method": "oats", "sparsity": 0.5, "iterations": 10},
                   evaluate_dense=False)
    summary = compress(job, ArtifactStore(root=tmp_path / "artifacts"))
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert record["method"] == "oats" and abs(record["decoder_linear_sparsity"] - 0.5) < 0.01
    assert all(layer["details"]["iterations"] == 10 for layer in record["engine"]["layers"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    factored = load_compressed(summary["output_dir"])
    ids = random_ids(2, 16)
    with torch.no_grad():
        assert torch.allclose(factored(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_osscar_through_the_flow_exports_a_physically_smaller_model(tmp_path, corpus, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    job = make_job(checkpoint, corpus, tmp_path, method={"method": "osscar", "sparsity": 0.5, "attention_groups": 1},
                   evaluate_dense=False)
    state = compress(job, ArtifactStore(root=tmp_path / "artifacts"), return_state=True)
    # 2 blocks x 2 stages (o_proj, down_proj) x (statistics + solve), and fetch, calibrate, embed, reassemble, eval.
    runs = task_runs(state.state_details.flow_run_id, expected=13)
    assert sorted(name for name in runs if name.startswith("solve_block")) == [
        "solve_block-0-0", "solve_block-0-1", "solve_block-1-0", "solve_block-1-1"]
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert record["structured"]["removed_groups_per_block"] == {"attention": 1, "mlp": 64}
    smaller = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert smaller.config.intermediate_size == 64 and smaller.config.num_key_value_heads == 1
    assert sum(parameter.numel() for parameter in smaller.parameters()) == record["structured"]["parameters_after"]
    perplexity = state.result()["perplexity"][0]["perplexity"]
    assert 1 < perplexity < float("inf")
