"""The comparison report (`pruneflow report`, DVC stage `report`): one row per model x method combination.

Inputs: the evaluate stage's metrics files (`metrics/<model>/<method>.json`: perplexity per protocol,
zero-shot accuracies, parameters, engine time, per-block errors) and, when present, the bench stage's
speed files (`speed/<model>.json`, or `speed/<model>/<name>.json` from the DVC bench stages). Outputs, written
atomically into one folder:
  results.md          the table: model, method, pattern, sparsity, params, perplexity per protocol,
                      zero-shot average, prune time, speed-ups over the dense model
  index.html          the table, the plots, the protocol, versions and input digests on one self-contained page
  metrics.json        the same numbers nested by method and combination (a DVC metrics file)
  perplexity.csv, block_errors.csv, speedups.csv   DVC plot data
  perplexity_vs_sparsity.png, block_errors.png, speedups.png
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from flows.report_page import write_report_page
from pruning.config import EngineConfig
from pruning.errors import ConfigError
from pruning.evaluation.speed import speedups
from pruning.io import atomic_directory, write_json
from pruning.models.sources import stored_parameters
from pruning.record import PruneRecord

PLOTS = ("perplexity_vs_sparsity.png", "block_errors.png", "speedups.png")


def record_fields(record: PruneRecord) -> dict[str, Any]:
    """What the report takes from a pruned model's record (pruneflow.json)."""
    additions = EngineConfig.model_validate(record.config["engine"]).additions()
    return {"method": record.method, "additions": list(additions),
            "pattern": record.pattern, "target_sparsity": record.target_sparsity,
            "sparsity": record.decoder_linear_sparsity, "parameters": record.remaining_parameters,
            "prune_seconds": record.engine.forward_seconds + record.engine.solve_seconds,
            "block_relative_error": record.engine.block_errors(), "inputs": record.inputs.model_dump(mode="json")}


def dense_fields(model_dir: Path) -> dict[str, Any]:
    return {"method": "dense", "pattern": "-", "target_sparsity": 0.0, "sparsity": 0.0,
            "parameters": stored_parameters(model_dir), "prune_seconds": None, "block_relative_error": []}


def sweep_entries(summaries: list[dict[str, Any]], model_names: dict[str, str],
                  cache_dir: Path) -> list[dict[str, Any]]:
    """Report entries from `pruneflow sweep` summaries (dense baselines and combinations)."""
    from pruning.pipeline import fetch_model

    entries = []
    for summary in summaries:
        fields = (record_fields(PruneRecord.read(Path(summary["output_dir"])))
                  if "output_dir" in summary else dense_fields(fetch_model(summary["model"], cache_dir)))
        entries.append({**fields, "model": model_names[summary["model"]], "zero_shot": summary.get("zero_shot"),
                        "perplexity": {result["protocol"]: result["perplexity"] for result in summary["perplexity"]}})
    return entries


def load_entries(metrics_dir: Path) -> list[dict[str, Any]]:
    """Every combination's entry from the evaluate stage's files, with its model's name (the folder)."""
    if not metrics_dir.is_dir():
        raise ConfigError(f"--metrics: '{metrics_dir}' is not a folder; give the evaluate stage's output "
                         "(metrics/<model>/<method>.json files)")
    if not any(metrics_dir.glob("*/*.json")):
        raise ConfigError(f"--metrics: '{metrics_dir}' holds no <model>/<method>.json files; run the evaluate stage "
                         "(dvc repro) first")
    return [{**entry, "model": path.parent.name} for path in sorted(metrics_dir.glob("*/*.json"))
            for entry in json.loads(path.read_text()).values()]


def load_speed(speed_dir: Path | None) -> list[dict[str, Any]]:
    """Speed-up rows (dense time / form time) per model and device. Files are `<model>.json` (pruneflow bench,
    the sweep) or `<model>/<name>.json` (the DVC bench stage, one file per method plus one for the dense model)."""
    if speed_dir is None or not speed_dir.is_dir():
        return []
    measured: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(speed_dir.glob("*.json")) + sorted(speed_dir.glob("*/*.json")):
        model = path.stem if path.parent == speed_dir else path.parent.name
        for device, results in json.loads(path.read_text())["devices"].items():
            measured.setdefault((model, device), []).extend(results.get("models", []))
    return [{**row, "model": model, "device": device}
            for (model, device), models in measured.items() for row in speedups(models)]


def combination(entry: dict[str, Any]) -> tuple[str, str, str, float]:
    return entry["model"], entry["method"], entry["pattern"], float(entry["target_sparsity"])


def speed_summary(rows: list[dict[str, Any]], entry: dict[str, Any]) -> str:
    """e.g. 'structured: prefill 1.30x, decode 1.25x' over the entry's measured forms (batch 1 cases)."""
    parts = []
    for row in rows:
        if combination(row) != combination(entry) or "skipped" in row:
            continue
        prefill = next((value for key, value in row.items() if key.startswith("prefill_1x")), None)
        decode = row.get("decode_batch1_speedup")
        if prefill is not None and decode is not None:
            parts.append(f"{row['device']} {row['form']}: {prefill:.2f}x / {decode:.2f}x")
    return "; ".join(parts) or "-"


def results_markdown(entries: list[dict[str, Any]], speed_rows: list[dict[str, Any]]) -> str:
    """The table as Markdown (results.md), with its protocol notes below it."""
    header, rows, notes = table_cells(entries, speed_rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, "", *notes]) + "\n"


def table_cells(entries: list[dict[str, Any]], speed_rows: list[dict[str, Any]]
                ) -> tuple[list[str], list[list[str]], list[str]]:
    """The report table's header, rows of cells and protocol notes (one source for Markdown, HTML, console)."""
    protocols = sorted({protocol for entry in entries for protocol in entry["perplexity"]})
    header = (["model", "method", "pattern", "target", "sparsity", "params (M)"]
              + [f"ppl {protocol}" for protocol in protocols]
              + ["zero-shot avg acc", "prune s", "speed-up prefill 1x / decode b1 (form: x)"])
    rows = []
    for entry in entries:
        zero_shot = entry.get("zero_shot")
        parameters = entry.get("parameters")
        cells = [entry["model"], " + ".join([entry["method"], *entry.get("additions", [])]), entry["pattern"],
                 f"{entry['target_sparsity']:g}",
                 f"{entry['sparsity']:.3f}",
                 f"{parameters / 1e6:.1f}" if parameters else "-"]
        cells += [f"{entry['perplexity'][protocol]:.2f}" if protocol in entry["perplexity"] else "-"
                  for protocol in protocols]
        cells += [f"{zero_shot['average_accuracy']:.4f}" if zero_shot else "-",
                  f"{entry['prune_seconds']:.0f}" if entry.get("prune_seconds") else "-",
                  speed_summary(speed_rows, entry)]
        rows.append(cells)
    notes = []
    with_zero_shot = [entry["zero_shot"] for entry in entries if entry.get("zero_shot")]
    if with_zero_shot:
        settings = with_zero_shot[0]["settings"]
        notes.append(f"Zero-shot: mean `acc` over {', '.join(with_zero_shot[0]['tasks'])}; lm-eval "
                     f"{settings['lm_eval_version']}, first {settings['limit']} documents per task, 0-shot, "
                     f"batch {settings['batch_size']}, data {settings['source']}.")
    notes.append("Target: the method's target (share of MLP neurons for structured methods); sparsity: the "
                 "achieved share of decoder-linear weights removed. Perplexity: token-level, the protocol names "
                 "dataset, window length and window count. Params: parameters left (zeros not counted; tied "
                 "embeddings once). Prune s: the engine's forward + solve time. Speed-ups: dense time / form time "
                 "from the bench stage (prefill at batch 1 / decode at batch 1).")
    return header, rows, notes


def write_report(entries: list[dict[str, Any]], speed_rows: list[dict[str, Any]], output: Path) -> Path:
    from flows.plots import plot_block_errors_by_method, plot_perplexity_vs_sparsity, plot_speedups

    perplexity_rows = [{"model": entry["model"], "method": entry["method"], "pattern": entry["pattern"],
                        "target_sparsity": entry["target_sparsity"], "sparsity": round(entry["sparsity"], 4),
                        "protocol": protocol, "perplexity": round(value, 4)}
                       for entry in entries for protocol, value in entry["perplexity"].items()]
    block_rows = [{"method": f"{entry['method']} {entry['pattern']} {entry['sparsity']:.2f}", "block": block,
                   "relative_error": error}
                  for entry in entries for block, error in enumerate(entry.get("block_relative_error", []))]
    measured = [row for row in speed_rows if "skipped" not in row]
    with atomic_directory(output) as staging:
        write_json(staging / "metrics.json", nested_metrics(entries))
        write_csv(staging / "perplexity.csv", perplexity_rows)
        write_csv(staging / "block_errors.csv", block_rows)
        write_csv(staging / "speedups.csv", measured)
        (staging / "results.md").write_text(results_markdown(entries, speed_rows))
        plot_perplexity_vs_sparsity(perplexity_rows, staging / PLOTS[0])
        plot_block_errors_by_method(block_rows, staging / PLOTS[1])
        plot_speedups(measured, staging / PLOTS[2])
        write_report_page(staging, *table_cells(entries, speed_rows), entries, PLOTS)
    return output


def nested_metrics(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """{model: {method: {pattern@sparsity: {perplexity per protocol, zero-shot average, params}}}}."""
    nested: dict[str, Any] = {}
    for entry in entries:
        values: dict[str, Any] = dict(entry["perplexity"])
        if entry.get("zero_shot"):
            values["zero_shot_average_accuracy"] = entry["zero_shot"]["average_accuracy"]
        if entry.get("parameters"):
            values["parameters"] = entry["parameters"]
        key = f"{entry['pattern']}@{entry['target_sparsity']:g}"
        nested.setdefault(entry["model"], {}).setdefault(entry["method"], {})[key] = values
    return nested


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["empty"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def log_report(output: Path, experiment: str) -> str:
    """Log the report folder to MLflow as one run named 'report' (table, CSVs, PNGs)."""
    from flows.tracking import SweepTracker

    tracker = SweepTracker(experiment)
    with tracker.mlflow.start_run(run_name="report") as run:
        tracker.mlflow.log_artifacts(str(output), artifact_path="report")
        return str(run.info.run_id)
