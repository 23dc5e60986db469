"""The DVC pipeline's stages (`pruneflow stage <name>`), one model (and method) at a time.

  fetch      the model as a safetensors directory at --output
  calibrate  the calibration windows and manifest at --output
  prune      every pattern x sparsity of one method, each a pruned model under --output/<combination>
  evaluate   perplexity of a model directory (or of every pruned model under it) into a metrics JSON
  report     all metrics into reports/: results.md, metrics.json, perplexity.csv, block_errors.csv

DVC caches and versions what these write; they run the same library code as the Prefect flows.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from flows.params import ModelEntry, SweepParams
from flows.tracking import block_errors
from pruning.calibration import build_calibration_set, load_calibration_set, save_calibration_set
from pruning.corpora import load_corpus
from pruning.io import atomic_directory, write_json
from pruning.pipeline import check_architecture, fetch_model, run_evaluation, run_prune_job
from pruning.reassemble import RECORD_FILE
from pruning.sources import load_tokenizer


def model_entry(params: SweepParams, name: str) -> ModelEntry:
    for model in params.models:
        if model.name == name:
            return model
    raise ValueError(f"models: no model named '{name}'; params.yaml names {', '.join(m.name for m in params.models)}")


def fetch(params: SweepParams, name: str, output: Path) -> None:
    directory = fetch_model(model_entry(params, name).source, params.paths.cache)
    check_architecture(directory)
    with atomic_directory(output) as staging:
        shutil.copytree(directory, staging, dirs_exist_ok=True)


def calibrate(params: SweepParams, model_dir: Path, output: Path) -> None:
    settings = params.calibration
    corpus = load_corpus(settings.source, "calibration", params.paths.cache, settings.text_field)
    calibration = build_calibration_set(corpus, load_tokenizer(model_dir), settings.num_samples, settings.seqlen,
                                        settings.seed)
    save_calibration_set(calibration, output)


def prune(params: SweepParams, name: str, method: str, model_dir: Path, calibration_dir: Path, output: Path) -> None:
    model = ModelEntry(name=name, source=str(model_dir))
    calibration = load_calibration_set(calibration_dir)
    with atomic_directory(output) as staging:
        for job in params.method_jobs(model, method, staging):
            run_prune_job(job.model_copy(update={"evaluation": ()}), calibration=calibration)


def evaluate(params: SweepParams, model_dir: Path, metrics: Path) -> None:
    """Metrics of one dense model directory, or of every pruned model directory under `model_dir`."""
    directories = ([model_dir] if (model_dir / "config.json").is_file()
                   else sorted(path.parent for path in model_dir.glob(f"*/{RECORD_FILE}")))
    entries: dict[str, Any] = {}
    for directory in directories:
        results = run_evaluation(str(directory), list(params.evaluation), params.paths.cache, params.engine.device)
        record_path = directory / RECORD_FILE
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        entries[directory.name if record else "dense"] = {
            "method": record["method"] if record else "dense",
            "pattern": record["pattern"] if record else "-",
            "sparsity": record["decoder_linear_sparsity"] if record else 0.0,
            "target_sparsity": record["target_sparsity"] if record else 0.0,
            "perplexity": {result.protocol: result.perplexity for result in results},
            "block_relative_error": block_errors(record["engine"]["layers"]) if record else [],
        }
    write_json(metrics, entries)


def report(metrics_dir: Path, output: Path) -> None:
    entries = [entry for path in sorted(metrics_dir.glob("**/*.json"))
               for entry in json.loads(path.read_text()).values()]
    rows = [{"method": entry["method"], "pattern": entry["pattern"], "target_sparsity": entry["target_sparsity"],
             "sparsity": round(entry["sparsity"], 4), "protocol": protocol, "perplexity": round(value, 4)}
            for entry in entries for protocol, value in entry["perplexity"].items()]
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        combination = f"{row['pattern']}@{row['target_sparsity']:g}"
        nested.setdefault(row["method"], {}).setdefault(combination, {})[row["protocol"]] = row["perplexity"]
    with atomic_directory(output) as staging:
        write_json(staging / "metrics.json", nested)
        _write_csv(staging / "perplexity.csv", rows)
        _write_csv(staging / "block_errors.csv", [
            {"method": f"{entry['method']} {entry['pattern']} {entry['sparsity']:.2f}", "block": block,
             "relative_error": error}
            for entry in entries for block, error in enumerate(entry["block_relative_error"])])
        table = ["| method | pattern | sparsity | perplexity | protocol |", "|---|---|---|---|---|"]
        columns = ("method", "pattern", "sparsity", "perplexity", "protocol")
        table += ["| " + " | ".join(str(row[key]) for key in columns) + " |" for row in rows]
        (staging / "results.md").write_text("\n".join(table) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
