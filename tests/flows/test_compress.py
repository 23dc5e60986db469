"""The `compress` flow with real Prefect (ephemeral server): the artifact store as its one cache (shared with
`pruneflow prune`), the same record as `prune`, reused steps shown as Cached, resume after SIGKILL, and the code
digest in every key."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_checkpoint

from flows.cli import build_parser, main
from flows.cli.job import job_from_arguments
from flows.compress import compress
from pruning.config import PruneJob
from pruning.models.checkpoint import CheckpointReader

REPO = Path(__file__).resolve().parents[2]


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
              "artifacts_dir": str(directory / "artifacts"), "evaluate_dense": True, "engine": {"device": "cpu"}}
    return PruneJob.model_validate({**fields, **overrides})


def file_times(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


def checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(directory)
    return {name: reader.read(name) for name in reader.names}


def assert_same_tensors(first: Path, second: Path) -> None:
    left, right = checkpoint_tensors(first), checkpoint_tensors(second)
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert right[name].equal(tensor), name


def test_second_identical_run_computes_nothing_and_changed_text_recomputes(tmp_path, corpus, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    job = make_job(checkpoint, corpus, tmp_path, overwrite=True)  # each run replaces the last one's output

    first = compress(job)
    assert (first.blocks_computed, first.blocks_reused) == (2, 0)
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert record["engine"]["forward_seconds"] > 0 and record["machine"]["threads"] == torch.get_num_threads()
    assert record["perplexity"] == [result.model_dump(mode="json") for result in first.perplexity]
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert card.startswith("---\n") and first.perplexity[0].protocol in card  # the flow's evaluation too
    written = file_times(tmp_path / "artifacts")
    second = compress(job)
    assert (second.blocks_computed, second.blocks_reused) == (0, 2)
    assert second.perplexity == first.perplexity
    assert file_times(tmp_path / "artifacts") == written, "an identical run wrote to the artifact store"

    shutil.copytree(tmp_path / "pruned", tmp_path / "first-pruned")
    shutil.rmtree(tmp_path / "artifacts")
    repaired = compress(job)
    assert repaired.blocks_computed == 2 and repaired.perplexity == first.perplexity
    assert_same_tensors(tmp_path / "first-pruned", tmp_path / "pruned")

    changed = tmp_path / "changed.txt"
    changed.write_text(corpus.read_text().replace("network", "model"))
    third = compress(make_job(checkpoint, changed, tmp_path, overwrite=True))
    assert third.blocks_computed == 2


def without_times(record: dict) -> dict:
    """A run record without what only says how this run went: its `run` section (step times, peak memory), every
    *_seconds, and how many blocks it computed or reused."""
    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if not key.endswith("_seconds")
                    and key not in ("run", "blocks_computed", "blocks_reused")}
        return [strip(item) for item in value] if isinstance(value, list) else value
    return strip(record)


def job_arguments(checkpoint, corpus, directory):
    return ["--model", str(checkpoint), "--method", "sparsegpt", "--sparsity", "0.5", "--calibration", str(corpus),
            "--num-samples", "4", "--seqlen", "32", "--eval", str(corpus), "--eval-seqlen", "32", "--eval-windows",
            "2", "--eval-dense", "--device", "cpu", "--output", str(directory / "pruned"),
            "--cache-dir", str(directory / "cache"), "--artifacts", str(directory / "artifacts")]


def test_prune_and_compress_write_the_same_record_and_the_second_reuses_the_first_ones_blocks(
        tmp_path, corpus, tiny_tokenizer_dir, capsys):
    """One job, two drivers, one artifact store: `compress` after `prune` computes no block, evaluates nothing
    again, and writes the record `prune` wrote, apart from times."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    assert main(["prune", *job_arguments(checkpoint, corpus, tmp_path)]) == 0
    by_prune = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    evaluations = sorted((tmp_path / "artifacts" / "evaluations").iterdir())
    shutil.rmtree(tmp_path / "pruned")
    assert main(["compress", *job_arguments(checkpoint, corpus, tmp_path)]) == 0
    by_compress = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())

    assert (by_prune["engine"]["blocks_computed"], by_prune["engine"]["blocks_reused"]) == (2, 0)
    assert (by_compress["engine"]["blocks_computed"], by_compress["engine"]["blocks_reused"]) == (0, 2)
    assert without_times(by_compress) == without_times(by_prune)
    assert sorted((tmp_path / "artifacts" / "evaluations").iterdir()) == evaluations, "an evaluation ran again"
    assert set(by_prune["run"]["step_seconds"]) == set(by_compress["run"]["step_seconds"])


def test_reused_steps_end_cached_in_prefect_and_the_same_weights_elsewhere_are_not_evaluated_again(
        tmp_path, corpus, tiny_tokenizer_dir):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    compress(make_job(checkpoint, corpus, tmp_path))
    evaluations = sorted((tmp_path / "artifacts" / "evaluations").iterdir())
    elsewhere = make_job(checkpoint, corpus, tmp_path, output_dir=str(tmp_path / "elsewhere"))
    state = compress(elsewhere, return_state=True)
    assert sorted((tmp_path / "artifacts" / "evaluations").iterdir()) == evaluations, "the same weights in another " \
        "folder were evaluated again"
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    reused = ("calibrate", "tokenize evaluation text", "prune blocks", "assemble", "evaluate")
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:  # task run states reach the API as events, a moment later
        while True:
            states = {run.name.rsplit("-", 1)[0]: run.state
                      for run in client.read_task_runs(flow_run_filter=this_run)}
            arrived = all(step in states and states[step] and states[step].is_final() for step in (*reused, "export"))
            if arrived or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    for step in reused:
        assert states[step].name == "Cached", (step, states[step].name)
        assert "reused" in states[step].message
    assert states["export"].name == "Completed"


def compress_command(checkpoint, corpus, directory):
    return [sys.executable, "-m", "flows.cli", "compress", "--model", str(checkpoint), "--method", "sparsegpt",
            "--sparsity", "0.5", "--calibration", str(corpus), "--num-samples", "16", "--seqlen", "64",
            "--eval", str(corpus), "--eval-seqlen", "32", "--eval-windows", "2", "--device", "cpu",
            "--output", str(directory / "pruned"), "--cache-dir", str(directory / "cache"),
            "--artifacts", str(directory / "artifacts")]


def finished_blocks(root: Path) -> int:
    return len(list(root.glob("blocks/*/block-*/block.json")))


def test_a_run_killed_mid_way_resumes_at_the_unfinished_block_with_bit_identical_weights(
        tmp_path, corpus, tiny_tokenizer_dir):
    from tiny_models import save_deep_checkpoint

    checkpoint = save_deep_checkpoint(tmp_path / "deep", tiny_tokenizer_dir)
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    killed = tmp_path / "killed"
    process = subprocess.Popen(compress_command(checkpoint, corpus, killed), env=environment, cwd=REPO,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and finished_blocks(killed / "artifacts") < 3:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the flow and its temporary Prefect server
    process.wait()
    done = finished_blocks(killed / "artifacts")
    assert 3 <= done < 8
    assert not (killed / "pruned").exists()

    arguments = build_parser().parse_args(compress_command(checkpoint, corpus, killed)[3:])
    resumed = compress(job_from_arguments(arguments))
    assert resumed.blocks_reused == done and resumed.blocks_computed == 8 - done

    uninterrupted = tmp_path / "uninterrupted"
    complete = subprocess.run(compress_command(checkpoint, corpus, uninterrupted), env=environment, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert complete.returncode == 0, complete.stderr[-2000:]
    assert_same_tensors(killed / "pruned", uninterrupted / "pruned")


def test_oats_through_the_flow_exports_a_factored_checkpoint_equal_to_the_merged_model(
        tmp_path, corpus, tiny_tokenizer_dir):
    from tiny_models import random_ids
    from transformers import AutoModelForCausalLM

    from pruning import load_compressed

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    job = make_job(checkpoint, corpus, tmp_path, method={"method": "oats", "sparsity": 0.5, "iterations": 10},
                   evaluate_dense=False)
    summary = compress(job)
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert record["method"] == "oats" and abs(record["decoder_linear_sparsity"] - 0.5) < 0.01
    assert all(layer["details"]["iterations"] == 10 for layer in record["engine"]["layers"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    factored = load_compressed(summary.output_dir)
    ids = random_ids(2, 16)
    with torch.no_grad():
        assert torch.allclose(factored(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_osscar_through_the_flow_exports_a_physically_smaller_model(tmp_path, corpus, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    job = make_job(checkpoint, corpus, tmp_path, method={"method": "osscar", "sparsity": 0.5, "attention_groups": 1},
                   evaluate_dense=False)
    summary = compress(job)
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert sorted(layer["name"].split(".", 3)[-1] for layer in record["engine"]["layers"]) == [
        "mlp.down_proj", "mlp.down_proj", "self_attn.o_proj", "self_attn.o_proj"]
    assert record["structured"]["removed_groups_per_block"] == {"attention": 1, "mlp": 64}
    smaller = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert smaller.config.intermediate_size == 64 and smaller.config.num_key_value_heads == 1
    assert sum(parameter.numel() for parameter in smaller.parameters()) == record["structured"]["parameters_after"]
    perplexity = summary.perplexity[0].perplexity
    assert 1 < perplexity < float("inf")
