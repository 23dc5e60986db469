"""pruning.evaluation.speed on tiny pruned models: every form loads, computes what the saved model computes, and is
timed; forms the device cannot run are reported skipped with a reason, never timed."""

import json

import pytest
import torch
from tiny_models import random_ids, save_tiny_checkpoint

from pruning.config import PruneJob
from pruning.errors import ConfigError
from pruning.job import run_job
from pruning.machine import cpu_has_native_bfloat16
from pruning.models.sources import load_model
from pruning.speed import (
    SpeedSettings,
    benchmark_in_fresh_process,
    benchmark_models,
    device_passes,
    load_form,
    model_forms,
)

QUICK = SpeedSettings(prefill_batches=(1, 2), prefill_tokens=16, decode_batches=(1, 2), decode_new_tokens=4,
                      gemm_layers=2, min_run_time=0.01, max_run_time=0.01, rounds=3)


@pytest.fixture(scope="module")
def pruned_models(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("speed")
    dense = save_tiny_checkpoint(root / "dense", tiny_tokenizer_dir)
    corpus = root / "corpus.txt"
    corpus.write_text("Pruning removes weights from a trained network, one layer at a time. " * 200)
    directories = {}
    for name, method in {"two-four": {"method": "sparsegpt", "pattern": "2:4"},
                         "structured": {"method": "osscar", "sparsity": 0.5},
                         "oats": {"method": "oats", "sparsity": 0.5, "iterations": 3}}.items():
        job = PruneJob.model_validate({"model": str(dense), "method": method, "output_dir": root / name,
                                       "calibration": {"source": str(corpus), "num_samples": 4, "seqlen": 32},
                                       "evaluation": [{"dataset": str(corpus), "seqlen": 32, "max_windows": 1}],
                                       "cache_dir": root / "cache", "artifacts_dir": root / "artifacts",
                                       "engine": {"device": "cpu"}})
        run_job(job)
        directories[name] = root / name
    return dense, directories


def test_each_form_computes_the_saved_model(pruned_models):
    dense, directories = pruned_models
    assert model_forms(dense) == ["dense"]
    assert model_forms(directories["two-four"]) == ["zeros", "csr", "semi-structured"]
    assert model_forms(directories["structured"]) == ["structured"]
    assert model_forms(directories["oats"]) == ["merged", "factored-dense", "factored-csr"]
    ids = random_ids(2, 16)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        for name, directory in directories.items():
            expected = load_model(directory).eval()(ids).logits
            for form in model_forms(directory):
                if form == "semi-structured":
                    continue
                logits = load_form(directory, form, cpu)(ids).logits
                torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4, msg=f"{name} {form}")


def test_benchmark_reports_every_case_and_skips_what_the_device_cannot_run(pruned_models):
    dense, directories = pruned_models
    progress = []
    results = benchmark_models([dense, *directories.values()], QUICK, dense,
                               on_model=lambda done, total: progress.append((done, total)))
    json.dumps(results)  # the whole record is plain JSON
    models = len(directories) + 1  # one pass per device torch can see: the CPU here, CUDA where there is one
    passes = len(results["devices"]) - sum("skipped" in entry for entry in results["devices"].values())
    assert progress == [(done, passes * models) for done in range(1, passes * models + 1)]
    if not torch.cuda.is_available():
        assert "no CUDA device" in results["devices"]["cuda"]["skipped"]
    cpu = results["devices"]["cpu"]
    assert cpu["threads"] == torch.get_num_threads()
    models = {entry["method"] + "-" + entry["pattern"]: entry["forms"] for entry in cpu["models"]}
    assert "needs CUDA" in models["sparsegpt-2:4"]["semi-structured"]["skipped"]
    for forms in models.values():
        for form, measured in forms.items():
            if "skipped" in measured:
                continue
            assert set(measured["prefill"]) == {"1x16", "2x16"}, form
            assert set(measured["decode"]) == {"batch1", "batch2"}, form
            assert len(measured["gemm"]) == 2
            for case in [*measured["prefill"].values(), *measured["decode"].values(), *measured["gemm"].values()]:
                assert case["median_s"] > 0 and case["iqr_s"] >= 0 and case["runs"] >= 1
            assert measured["prefill"]["2x16"]["peak_rss_mb"] > 0
            assert measured["decode"]["batch2"]["tokens_per_second"] > 0
    # The structured model's largest linears are physically smaller than the dense model's.
    dense_shapes = {tuple(case["shape"]) for case in models["dense--"]["dense"]["gemm"].values()}
    structured_shapes = {tuple(case["shape"]) for case in models["osscar-structured"]["structured"]["gemm"].values()}
    assert max(a * b for a, b in structured_shapes) < max(a * b for a, b in dense_shapes)
    # Every prefill and decode case is paired with the dense model in this process: a median ratio inside its spread.
    speedups = {(row["method"], row["form"]): row for row in cpu["speedups"]}
    for row in speedups.values():
        if row["skipped"] is None:
            assert set(row["ratios"]) == {"prefill_1x16", "prefill_2x16", "decode_batch1", "decode_batch2"}
            for case, ratio in row["ratios"].items():
                low, high = row["spread"][case]
                assert 0 < low <= ratio <= high, (row["form"], case)
    assert "needs CUDA" in speedups[("sparsegpt", "semi-structured")]["skipped"]
    assert models["dense--"]["dense"]["prefill"]["1x16"]["dense_median_s"] > 0
    assert cpu["dtype"] == ("bfloat16" if cpu_has_native_bfloat16() else "float32")
    assert models["sparsegpt-2:4"]["csr"]["dtype"] == "float32"
    assert cpu["device"].startswith("cpu (") and isinstance(cpu["cpu_flags"], list)


def test_cpu_passes_run_the_fastest_dtype_first_and_others_once():
    names = [(name, dtype) for name, _, dtype in device_passes(SpeedSettings(devices=("cpu", "cuda"),
                                                                             cpu_dtypes=("fastest", "bfloat16")))]
    fastest = torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    assert names[0] == ("cpu", fastest) and names[-1] == ("cuda", torch.float16)
    assert names[1:-1] == ([] if fastest == torch.bfloat16 else [("cpu/bfloat16", torch.bfloat16)])


def test_the_gpu_bench_script_runs_both_phases_in_its_dry_run_and_writes_results_under_out(tmp_path):
    """bench/gpu_scale.py is prepared for a short device window: its dry run (tiny shapes, CPU) goes through both
    phases and leaves under $OUT the per-block scale record and the speed bench of a 2:4 and a structured model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_scale.py"
    out = tmp_path / "out"
    out.mkdir()
    finished = subprocess.run([sys.executable, str(script), "--dry-run", "--work", str(tmp_path / "work")],
                              env={**os.environ, "OUT": str(out)}, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    scale = json.loads((out / "gpu_scale.json").read_text())
    assert scale["complete"] and scale["pruned_checkpoint_complete"] and scale["blocks_done"] == 2
    assert len(scale["block_seconds"]) == 2 and scale["block0_capture_seconds"] > 0
    assert scale["persist_activations"] is False and "float32_matmul_precision" in scale["precision"]
    speed = json.loads((out / "gpu_speed.json").read_text())["devices"]["cpu"]
    forms = {(row["method"], row["form"]): row for row in speed["speedups"]}
    assert forms[("structured-wanda", "structured")]["ratios"] and forms[("sparsegpt", "zeros")]["ratios"]
    assert "needs CUDA" in forms[("sparsegpt", "semi-structured")]["skipped"]


def test_the_fresh_process_benchmark_writes_what_benchmark_writes_and_reports_its_progress(pruned_models, tmp_path):
    dense, directories = pruned_models
    settings = QUICK.model_copy(update={"devices": ("cpu",), "prefill_batches": (1,), "decode_batches": (1,)})
    progress = []
    output = benchmark_in_fresh_process([dense, directories["structured"]], settings, tmp_path / "speed.json", dense,
                                        lambda done, total: progress.append((done, total)))
    assert progress == [(1, 2), (2, 2)]
    written = json.loads(output.read_text())
    assert written["settings"] == settings.model_dump(mode="json")
    assert [list(model["forms"]) for model in written["devices"]["cpu"]["models"]] == [["dense"], ["structured"]]
    assert written["devices"]["cpu"]["models"][1]["forms"]["structured"]["prefill"]["1x16"]["speedup"] > 0


def test_a_failure_in_the_benchmark_process_is_raised_here_and_writes_nothing(pruned_models, tmp_path):
    dense, _ = pruned_models
    with pytest.raises(ConfigError, match="is neither a pruned model directory nor a folder of them"):
        benchmark_in_fresh_process([tmp_path / "empty"], QUICK, tmp_path / "speed.json", dense)
    assert not (tmp_path / "speed.json").exists()


def test_forms_limits_what_is_measured(pruned_models):
    dense, directories = pruned_models
    settings = QUICK.model_copy(update={"devices": ("cpu",), "forms": ("dense", "zeros")})
    measured = benchmark_models([dense, directories["two-four"], directories["structured"]], settings, dense)
    assert [list(model["forms"]) for model in measured["devices"]["cpu"]["models"]] == [["dense"], ["zeros"], []]


def test_an_unknown_form_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="forms"):
        SpeedSettings(forms=("sparse-magic",))
