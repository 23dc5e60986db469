"""Atomic outputs: a replaced folder is never missing, killed runs' staging is cleaned, unsafe outputs are refused."""

import os
import subprocess
import sys

import pytest

from pruning.io import atomic_directory, check_output_path, remove_stale_staging


def test_replacing_a_folder_swaps_it_whole_and_leaves_no_staging(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # the old copy stays until the new one is complete
    assert sorted(path.name for path in target.iterdir()) == ["new.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_a_failure_leaves_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("solver failed")
    assert sorted(path.name for path in target.iterdir()) == ["old.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_staging_of_a_killed_process_is_removed_and_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f".model.partial-{dead.stdout.strip()}-abc"
    live = tmp_path / f".model.partial-{os.getpid()}-def"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "shard.safetensors").write_bytes(b"x" * 10)
    assert remove_stale_staging(tmp_path / "model") == [stale]
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("layout, directory, overwrite, message", [
    ("non-empty", True, False, "exists and is not empty; choose a new folder, or pass --overwrite"),
    ("file", True, False, "exists and is a file"),
    ("folder", False, False, "is a folder; give a file path"),
    ("under-file", True, False, "cannot be created"),
    ("under-file", False, False, "cannot be created"),
    ("working-folder", True, True, "is the working folder or one of its parents"),
])
def test_unsafe_outputs_are_refused_naming_the_field(layout, directory, overwrite, message, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-folder" / "notes.txt").write_text("keep me")
    path = {"non-empty": tmp_path / "a-folder", "file": tmp_path / "a-file", "folder": tmp_path / "a-folder",
            "under-file": tmp_path / "a-file" / "out", "working-folder": tmp_path}[layout]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^output_dir: ") as error:
        check_output_path(path, "output_dir", directory=directory, overwrite=overwrite)
    assert message in str(error.value)
    assert (tmp_path / "a-folder" / "notes.txt").read_text() == "keep me"


def test_safe_outputs_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    check_output_path(tmp_path / "new" / "deeper", "output_dir", directory=True)
    check_output_path(tmp_path / "empty", "output_dir", directory=True)
    check_output_path(tmp_path / "full", "output_dir", directory=True, overwrite=True)
    check_output_path(tmp_path / "full" / "x", "--output", directory=False)
