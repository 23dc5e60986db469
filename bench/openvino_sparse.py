"""Benchmark: does OpenVINO's sparse-weight decompression make a pruned SmolLM2 faster end to end on this CPU?

OpenVINO's CPU plugin can pack the zeros out of int8 weights at compile time (`CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`:
matrices at least that sparse are stored packed and unpacked inside the kernel), the one maintained CPU kernel that
might turn unstructured sparsity into speed. This script, in a venv of its own (openvino, nncf, optimum-intel):
  1. exports each pruned folder (and the dense original) to OpenVINO IR with int8 weights, symmetric so that a
     zero weight stays an int8 zero (optimum-intel + nncf weight compression);
  2. compiles each twice, without the property and with it at the model's sparsity, and records the kernels the
     plugin chose for its FullyConnected layers (the runtime model's `primitiveType`), so that whether the sparse
     path engaged is read off, not guessed;
  3. times greedy decode (batch 1, a 16-token prompt, 32 new tokens, KV cache) of the two compiled models in
     alternation, `ROUNDS` times, after a warm-up of each: speed-up = median of the per-round ratios, with quartiles;
  4. checks that both give the same tokens.

  .venv/bin/python bench/openvino_sparse.py --pruned /tmp/smol-sgpt-0.5 /tmp/smol-sgpt-0.7
                                                            -> bench/results/openvino_sparse.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from venvs import REPO, VENVS, make_venv, run_json

OPENVINO = ["openvino==2026.4.1", "nncf==3.4.0", "optimum-intel==2.2.0"]
ROUNDS = 7

# Runs in the OpenVINO venv: no pruneflow there.
MEASURE = r'''
import json, statistics, sys, time
from pathlib import Path
import openvino as ov
import torch
from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
from transformers import AutoTokenizer

folder, ir, rate, rounds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
if not (ir / "openvino_model.xml").is_file():
    OVModelForCausalLM.from_pretrained(folder, export=True, compile=False,
                                       quantization_config=OVWeightQuantizationConfig(bits=8, sym=True)
                                       ).save_pretrained(ir)
tokenizer = AutoTokenizer.from_pretrained(folder)
prompt = tokenizer("The history of the city begins with a small settlement on the river, where",
                   return_tensors="pt").input_ids[:, :16]
threads = {"INFERENCE_NUM_THREADS": "2", "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": ""}
models = {"int8": OVModelForCausalLM.from_pretrained(ir, ov_config=threads),
          "int8_sparse": OVModelForCausalLM.from_pretrained(
              ir, ov_config={**threads, "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": str(rate)})}

def kernels(model):
    """FullyConnected layers by the kernel the plugin ran (read after decoding: shapes are dynamic until then)."""
    found = {}
    for op in model.request.get_compiled_model().get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "FullyConnected":
            kind = f"{info['primitiveType'].astype(str)} ({info['runtimePrecision'].astype(str)} weights)"
            found[kind] = found.get(kind, 0) + 1
    return found

def decode(model):
    started = time.perf_counter()
    tokens = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                            min_new_tokens=32, do_sample=False)
    return time.perf_counter() - started, tokens

outputs = {name: decode(model)[1] for name, model in models.items()}  # warm-up
ratios, seconds = [], {name: [] for name in models}
for _ in range(rounds):
    for name, model in models.items():
        seconds[name].append(decode(model)[0])
    ratios.append(seconds["int8"][-1] / seconds["int8_sparse"][-1])
quartiles = statistics.quantiles(ratios, n=4)
core = ov.Core()
print(json.dumps({
    "openvino": ov.__version__, "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
    "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
    "sparse_rate": rate, "fully_connected_kernels": {name: kernels(model) for name, model in models.items()},
    "decode_seconds_median": {name: statistics.median(values) for name, values in seconds.items()},
    "decode_tokens_per_second": {name: 32 / statistics.median(values) for name, values in seconds.items()},
    "speedup_sparse_over_int8": statistics.median(ratios), "speedup_spread": [quartiles[0], quartiles[2]],
    "same_tokens": bool(torch.equal(outputs["int8"], outputs["int8_sparse"])),
    "ir_bytes": sum(path.stat().st_size for path in ir.glob("*.bin"))}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruned", type=Path, nargs="+", required=True, help="pruned SmolLM2 folders (unstructured)")
    parser.add_argument("--venv", type=Path, default=VENVS / "openvino")
    parser.add_argument("--work", type=Path, default=REPO / ".pruneflow" / "openvino-ir")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "openvino_sparse.json")
    arguments = parser.parse_args()

    from pruning.config import DEFAULT_MODEL
    from pruning.io import write_json
    from pruning.machine import Machine
    from pruning.record import PruneRecord
    from pruning.steps import fetch

    python = make_venv(arguments.venv, OPENVINO, without=("torchvision",))
    original = fetch(DEFAULT_MODEL, REPO / ".pruneflow" / "cache").path
    folders: dict[str, tuple[Path, float]] = {"dense": (original, 0.5)}
    for folder in arguments.pruned:
        record = PruneRecord.read(folder)
        if record.pattern == "structured":
            parser.error(f"--pruned: {folder} is structured (already smaller); give unstructured or N:M models")
        folders[f"{record.method} {record.pattern} {record.target_sparsity:g}"] = \
            (folder.resolve(), round(record.decoder_linear_sparsity - 0.005, 3))
    results: dict[str, Any] = {}
    for name, (folder, rate) in folders.items():
        results[name] = {"folder": str(folder), **run_json(python, MEASURE, str(folder),
                                                            str(arguments.work / name.replace(" ", "-")),
                                                            str(rate), str(ROUNDS))}
        row = results[name]
        print(f"{name:28s} sparse/int8 decode {row['speedup_sparse_over_int8']:.3f}x "
              f"({row['speedup_spread'][0]:.2f}-{row['speedup_spread'][1]:.2f})  kernels "
              f"{row['fully_connected_kernels']}  same tokens {row['same_tokens']}", flush=True)
    write_json(arguments.output, {
        "what": "OpenVINO int8 (symmetric weight-only) decode, compiled with and without "
                "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE, paired in one process",
        "protocol": f"greedy decode, batch 1, 16-token prompt, 32 new tokens, {ROUNDS} alternating rounds after a "
                    "warm-up, 2 threads; speed-up = median of per-round int8/int8_sparse time ratios (quartiles)",
        "machine": Machine.resolve("cpu", "float32").summary(), "models": results})


if __name__ == "__main__":
    main()
