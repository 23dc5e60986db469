"""The output guard and the error boundary: a second writer of one output fails at once (another process holding
the lock), a disk too small is refused before the work (a real 64 KiB tmpfs), a fault during the work is one line
and status 1, and --debug keeps the traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import describe_failure, main
from pruning.errors import ConfigError
from pruning.io import exclusive_output

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def prune_arguments(model, corpus, output, root):
    return ["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5", "--eval", str(corpus),
            "--eval-seqlen", "32", "--eval-windows", "2", "--output", str(output), "--cache-dir", str(root / "cache"),
            "--artifacts", str(root / "artifacts")]


def test_a_second_writer_of_an_output_fails_at_once_naming_the_first(tiny_checkpoint, corpus_file, tmp_path):
    output = tmp_path / "pruned"
    with exclusive_output(output, "output_dir"):  # this test process is the first writer
        second = subprocess.run([sys.executable, "-m", "flows.cli",
                                 *prune_arguments(tiny_checkpoint, corpus_file, output, tmp_path)],
                                capture_output=True, text=True, env=OFFLINE, cwd=tmp_path, timeout=120)
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith("pruneflow: error: output_dir: ")
    assert f"being written by another pruneflow run (process {os.getpid()})" in second.stderr
    assert not output.exists()
    assert not (tmp_path / ".pruned.lock").exists(), "the first writer's lock file outlived it"
    # the lock released, the same command runs
    assert main(prune_arguments(tiny_checkpoint, corpus_file, output, tmp_path)) == 0
    assert (output / "config.json").is_file()
    assert not (tmp_path / ".pruned.lock").exists()


def test_a_lock_is_reentrant_within_one_process_and_exclusive_across_them(tmp_path):
    output = tmp_path / "out"
    with exclusive_output(output, "output_dir"), exclusive_output(output, "output_dir"):
        probe = subprocess.run([sys.executable, "-c", "import sys; from pruning.io import exclusive_output\n"
                                f"with exclusive_output({str(output)!r}, 'x'): pass"],
                               capture_output=True, text=True, cwd=Path.cwd(), timeout=60)
        assert probe.returncode != 0 and "being written by another pruneflow run" in probe.stderr
    with exclusive_output(output, "output_dir"):  # released: it can be taken again
        pass


@pytest.fixture()
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (root only: mounting needs CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_disk_too_small_is_refused_before_the_work(tiny_checkpoint, corpus_file, tmp_path, small_disk, capsys):
    weights = sum(path.stat().st_size for path in tiny_checkpoint.glob("*.safetensors"))
    assert weights > 64 * 1024, "the tiny checkpoint must outgrow the small disk for this test to mean anything"
    arguments = prune_arguments(tiny_checkpoint, corpus_file, tmp_path / "pruned", tmp_path)
    arguments[arguments.index("--artifacts") + 1] = str(small_disk / "artifacts")
    status = main(arguments)
    error = capsys.readouterr().err.strip()  # after the job's (empty) progress row
    assert status == 2, error
    assert error.startswith("pruneflow: error: artifacts_dir: the pruned blocks and model needs about"), error
    assert len(error.splitlines()) == 1
    assert list(small_disk.iterdir()) == [] and not (tmp_path / "pruned").exists()


def test_a_fault_during_the_work_is_one_line_and_status_1():
    status, lines = describe_failure(OSError(28, "No space left on device", "/data/out/model.safetensors"))
    assert status == 1
    assert lines == ["/data/out/model.safetensors: No space left on device; (run again with --debug for the "
                     "traceback)"]
    assert describe_failure(RuntimeError("a bug of ours")) is None  # keeps its traceback


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"not a gguf file at all")
    arguments = ["fetch", "--model", str(tmp_path / "m.gguf"), "--cache-dir", str(tmp_path / "cache")]
    assert main(arguments) == 2
    with pytest.raises(ConfigError, match="is not a readable GGUF file"):
        main([*arguments, "--debug"])
