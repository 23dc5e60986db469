"""`pruneflow prune` through the streamed engine: killed with SIGKILL it resumes from its finished blocks with
bit-identical weights, and an edit to the `pruning` source recomputes instead of serving old blocks."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_models import save_deep_checkpoint, save_tiny_checkpoint

from pruning.models.checkpoint import CheckpointReader

REPO = Path(__file__).resolve().parents[2]


def prune_command(checkpoint, corpus, directory):
    return [sys.executable, "-m", "flows.cli", "prune", "--model", str(checkpoint), "--method", "sparsegpt",
            "--sparsity", "0.5", "--calibration", str(corpus), "--num-samples", "16", "--seqlen", "64",
            "--eval", str(corpus), "--eval-seqlen", "32", "--eval-windows", "2", "--device", "cpu",
            "--output", str(directory / "pruned"), "--cache-dir", str(directory / "cache"),
            "--artifacts", str(directory / "artifacts")]


def finished_blocks(artifacts: Path) -> int:
    return len(list(artifacts.glob("blocks/*/block-*/block.json")))


def tensors(directory: Path) -> dict:
    reader = CheckpointReader(directory)
    return {name: reader.read(name) for name in reader.names}


def test_prune_killed_mid_way_resumes_with_bit_identical_weights(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    checkpoint = save_deep_checkpoint(tmp_path / "deep", tiny_tokenizer_dir)
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    killed = tmp_path / "killed"
    process = subprocess.Popen(prune_command(checkpoint, corpus, killed), env=environment, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and finished_blocks(killed / "artifacts") < 3:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = finished_blocks(killed / "artifacts")
    assert 3 <= done < 8 and not (killed / "pruned").exists()

    resumed = subprocess.run(prune_command(checkpoint, corpus, killed), env=environment, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    engine = json.loads((killed / "pruned" / "pruneflow.json").read_text())["engine"]
    assert (engine["blocks_reused"], engine["blocks_computed"]) == (done, 8 - done)
    assert not list((killed / "artifacts").glob("blocks/*/scratch-*")), "the killed run's scratch files were left"

    uninterrupted = tmp_path / "uninterrupted"
    complete = subprocess.run(prune_command(checkpoint, corpus, uninterrupted), env=environment, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert complete.returncode == 0, complete.stderr[-2000:]
    expected, got = tensors(uninterrupted / "pruned"), tensors(killed / "pruned")
    assert got.keys() == expected.keys()
    assert all(got[name].equal(tensor) for name, tensor in expected.items())


def test_an_edit_to_a_solver_recomputes_the_blocks_instead_of_serving_the_cache(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    code = tmp_path / "code"
    for package in ("pruning", "tasks", "flows"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    environment = {**os.environ, "PYTHONPATH": str(code)}

    def blocks_computed() -> int:  # each run replaces the previous one's output
        completed = subprocess.run([*prune_command(checkpoint, corpus, tmp_path), "--overwrite"], env=environment,
                                   cwd=tmp_path,
                                   capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-2000:]
        record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
        assert record["inputs"]["code_digest"]
        reused, total = re.search(r"(\d+) of (\d+) blocks reused", completed.stdout).groups()
        return int(total) - int(reused)

    assert blocks_computed() == 2
    assert blocks_computed() == 0
    with open(code / "pruning" / "methods" / "sparsegpt.py", "a") as solver:
        solver.write("# an edit\n")
    assert blocks_computed() == 2
