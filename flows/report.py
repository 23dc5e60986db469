"""The comparison report (`pruneflow report`, DVC stage `report`, the end of a sweep): one `ReportRow` per model x
method combination, and one per dense model.

Inputs: report rows (the sweep builds them from its run records; the DVC evaluate stage writes one JSON file per
combination under `evaluations/<model>/<method>/`) and, when present, the bench stage's speed files
(`speed/<model>.json`, or `speed/<model>/<name>.json` from the DVC bench stages). Outputs, written atomically into
one folder:
  results.md          the table: model, method, pattern, sparsity, params, perplexity per protocol,
                      zero-shot average, engine seconds, speed-ups over the dense model
  index.html          the table, the plots, the protocol, versions and input digests on one self-contained page
  perplexity.csv, block_errors.csv, speedups.csv   DVC plot data
  perplexity_vs_sparsity.png, block_errors.png, speedups.png
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from flows.report_page import write_report_page
from pruning.errors import ConfigError
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.evaluation.zero_shot import ZeroShotResult
from pruning.io import atomic_directory, write_json
from pruning.models.sources import stored_parameters
from pruning.record import PruneRecord, RunInputs
from pruning.speed import Speedup, speedups

PLOTS = ("perplexity_vs_sparsity.png", "block_errors.png", "speedups.png")
ACCURACY_PLOT = "accuracy_vs_sparsity.png"  # when vision models were evaluated
ROW_GLOB = "*/*/*.json"  # evaluations/<model>/<method>/<combination>.json


class ReportRow(BaseModel):
    """One line of the report: a combination (from its run record) or a dense model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # the model's name in params.yaml
    method: str
    additions: tuple[str, ...] = ()  # engine settings beyond the method's own objective (EngineConfig.additions)
    pattern: str
    target_sparsity: float
    sparsity: float
    parameters: int | None
    perplexity: dict[str, float]  # by protocol
    accuracy: dict[str, float] = {}  # a vision model's top-1, by protocol
    zero_shot: ZeroShotResult | None = None
    engine_seconds: float | None = None  # the engine's forward + solve time
    block_relative_error: list[float] = []
    inputs: RunInputs | None = None

    @classmethod
    def of_record(cls, record: PruneRecord, model: str) -> ReportRow:
        return cls(model=model, method=record.method, additions=record.config.engine.additions(),
                   pattern=record.pattern, target_sparsity=record.target_sparsity,
                   sparsity=record.decoder_linear_sparsity, parameters=record.remaining_parameters,
                   perplexity=perplexity_by_protocol(record.perplexity), zero_shot=record.zero_shot,
                   accuracy={result.protocol: result.top1 for result in record.accuracy},
                   engine_seconds=record.engine.engine_seconds, block_relative_error=record.engine.block_errors(),
                   inputs=record.inputs)

    @classmethod
    def dense(cls, model_dir: Path, model: str, perplexity: list[PerplexityResult],
              zero_shot: ZeroShotResult | None, accuracy: list[AccuracyResult] | None = None) -> ReportRow:
        return cls(model=model, method="dense", pattern="-", target_sparsity=0.0, sparsity=0.0,
                   parameters=stored_parameters(model_dir), perplexity=perplexity_by_protocol(perplexity),
                   zero_shot=zero_shot, accuracy={result.protocol: result.top1 for result in accuracy or []})

    @property
    def label(self) -> str:
        """The method with its engine additions, e.g. 'admm + block reconstruction'."""
        return " + ".join([self.method, *self.additions])

    def flat_metrics(self) -> dict[str, object]:
        """The DVC metrics of the row: the same flat keys for every method, so `dvc metrics show` shares columns."""
        metrics: dict[str, object] = {"perplexity": {metric_key(protocol): value
                                                     for protocol, value in self.perplexity.items()},
                                      "sparsity": round(self.sparsity, 6), "parameters": self.parameters}
        if self.accuracy:
            metrics["top1"] = {metric_key(protocol): value for protocol, value in self.accuracy.items()}
        if self.engine_seconds is not None:
            metrics["engine_seconds"] = round(self.engine_seconds, 2)
        if self.zero_shot is not None:
            metrics["zero_shot_average_accuracy"] = self.zero_shot.average_accuracy
        return metrics


def perplexity_by_protocol(results: list[PerplexityResult]) -> dict[str, float]:
    return {result.protocol: result.perplexity for result in results}


def metric_key(protocol: str) -> str:
    """token-ppl[wiki-summaries|seqlen=256|windows=16|...] -> wiki-summaries_256x16 (no dots: DVC nests on them)."""
    found = re.match(r"token-ppl\[(?P<dataset>[^|]*)\|seqlen=(?P<seqlen>\d+)\|windows=(?P<windows>\d+)", protocol)
    name = f"{found['dataset']}_{found['seqlen']}x{found['windows']}" if found else protocol
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def write_row(row: ReportRow, name: str, rows_directory: Path, metrics_directory: Path) -> None:
    """A DVC evaluate stage's outputs for one model: its row as `<rows_directory>/<name>.json` (what the report
    reads) and its flat metrics as `<metrics_directory>/<name>.json` (what `dvc metrics show` reads)."""
    write_json(rows_directory / f"{name}.json", row.model_dump(mode="json"))
    write_json(metrics_directory / f"{name}.json", row.flat_metrics())


def load_rows(folder: Path) -> list[ReportRow]:
    """Every row the evaluate stages wrote (`<folder>/<model>/<method>/<combination>.json`)."""
    if not folder.is_dir():
        raise ConfigError(f"--rows: '{folder}' is not a folder; give the evaluate stage's output "
                          "(evaluations/<model>/<method>/<combination>.json files)")
    paths = sorted(folder.glob(ROW_GLOB))
    if not paths:
        raise ConfigError(f"--rows: '{folder}' holds no <model>/<method>/<combination>.json files; run the "
                          "evaluate stage (dvc repro) first")
    return [ReportRow.model_validate_json(path.read_text()) for path in paths]


def load_speed(speed_dir: Path | None) -> list[Speedup]:
    """Speed-up rows (dense time / form time) per model and device. Files are `<model>.json` (pruneflow bench,
    the sweep) or `<model>/<name>.json` (the DVC bench stage, one file per method plus one for the dense model)."""
    if speed_dir is None or not speed_dir.is_dir():
        return []
    measured: dict[tuple[str, str], list[dict[str, object]]] = {}
    for path in sorted(speed_dir.glob("*.json")) + sorted(speed_dir.glob("*/*.json")):
        model = path.stem if path.parent == speed_dir else path.parent.name
        for device, results in json.loads(path.read_text())["devices"].items():
            measured.setdefault((model, device), []).extend(results.get("models", []))
    return [row.model_copy(update={"model": model, "device": device})
            for (model, device), models in measured.items() for row in speedups(models)]  # type: ignore[arg-type]


SPARSE_KERNEL_FORMS = ("csr", "semi-structured", "factored-csr")  # forms whose matmuls skip the zeros


def speed_summary(rows: list[Speedup], row: ReportRow, spread: bool = True) -> str:
    """e.g. 'cpu structured: 1.30x (1.27-1.33) / 1.25x (1.20-1.28)' over the row's measured forms (prefill and
    decode at batch 1; the quartiles over the paired rounds in brackets unless not `spread`). A sparse (not
    structured) model is labelled 'size/quality only' unless a sparse-kernel form was faster in all but a quarter
    of its rounds: `zeros` runs dense kernels, so its ratio is noise around 1x."""
    parts, faster = [], False
    for speed in rows:
        if (speed.model, speed.method, speed.pattern, speed.target_sparsity) != (
                row.model, row.method, row.pattern, row.target_sparsity) or speed.skipped:
            continue
        prefill = next((key for key in speed.ratios if key.startswith("prefill_1x")), None)
        cases = [case for case in (prefill, "decode_batch1") if case is not None and case in speed.ratios]
        if len(cases) == 2:
            parts.append(f"{speed.device} {speed.form}: " + " / ".join(
                f"{speed.ratios[case]:.2f}x" + (f" ({speed.spread[case][0]:.2f}-{speed.spread[case][1]:.2f})"
                                                if spread else "") for case in cases))
            faster = faster or (speed.form in SPARSE_KERNEL_FORMS and any(speed.spread[case][0] > 1.0
                                                                          for case in cases))
    if not parts:
        return "-"
    sparse_only = row.method != "dense" and row.pattern != "structured" and not faster
    return ("size/quality only; " if sparse_only else "") + "; ".join(parts)


def results_markdown(rows: list[ReportRow], speed_rows: list[Speedup]) -> str:
    """The table as Markdown (results.md), with its protocol notes below it."""
    header, cells, notes = table_cells(rows, speed_rows)

    def line(cells: list[str]) -> str:  # a protocol holds '|': escaped, or it would split its cell in two
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line(header), "|" + "---|" * len(header), *(line(row) for row in cells)]
    return "\n".join([*lines, "", *notes]) + "\n"


def table_cells(rows: list[ReportRow], speed_rows: list[Speedup],
                compact: bool = False) -> tuple[list[str], list[list[str]], list[str]]:
    """The report table's header, rows of cells and protocol notes (one source for Markdown, HTML, console;
    `compact`: speed-ups without their spread, for a terminal's width)."""
    protocols = sorted({protocol for row in rows for protocol in row.perplexity})
    image_protocols = sorted({protocol for row in rows for protocol in row.accuracy})
    header = (["model", "method", "pattern", "target", "sparsity", "params (M)"]
              + [f"ppl {protocol}" for protocol in protocols] + [f"top-1 {protocol}" for protocol in image_protocols]
              + ["zero-shot avg acc", "engine s", "speed-up prefill 1x / decode b1 (form: x)"])
    cells = []
    for row in rows:
        line = [row.model, row.label, row.pattern, f"{row.target_sparsity:g}", f"{row.sparsity:.3f}",
                f"{row.parameters / 1e6:.1f}" if row.parameters else "-"]
        line += [f"{row.perplexity[protocol]:.2f}" if protocol in row.perplexity else "-" for protocol in protocols]
        line += [f"{row.accuracy[protocol]:.4f}" if protocol in row.accuracy else "-" for protocol in image_protocols]
        line += [f"{row.zero_shot.average_accuracy:.4f}" if row.zero_shot else "-",
                 f"{row.engine_seconds:.0f}" if row.engine_seconds else "-",
                 speed_summary(speed_rows, row, spread=not compact)]
        cells.append(line)
    notes = []
    with_zero_shot = [row.zero_shot for row in rows if row.zero_shot]
    if with_zero_shot:
        settings = with_zero_shot[0].settings
        notes.append(f"Zero-shot: mean `acc` over {', '.join(with_zero_shot[0].tasks)}; lm-eval "
                     f"{settings.lm_eval_version}, first {settings.limit} documents per task, 0-shot, "
                     f"batch {settings.batch_size}, data {settings.source}.")
    notes.append("Target: the method's target (share of MLP neurons for structured methods); sparsity: the "
                 "achieved share of decoder-linear weights removed. Perplexity: token-level, the protocol names "
                 "dataset, window length and window count. Params: parameters left (zeros not counted; tied "
                 "embeddings once). Engine s: the engine's forward + solve time. "
                 + ("Speed-ups: dense time / form time, prefill at batch 1 / decode at batch 1, each case timed in "
                    "alternation with the dense model in the same process (median over the rounds; "
                    + ("their quartiles are in results.md" if compact else "quartiles in brackets") + "); "
                    "'size/quality only': "
                    "sparse weights that no sparse kernel measured here makes faster (zeros run dense kernels)."
                    if any(not speed.skipped for speed in speed_rows) else "Speed: not measured in this run "
                    "(`pruneflow bench`, the DVC bench stages, or bench.in_sweep)."))
    return header, cells, notes


def write_report(rows: list[ReportRow], speed_rows: list[Speedup], output: Path) -> Path:
    from flows.plots import plot_block_errors_by_method, plot_quality_vs_sparsity, plot_speedups

    perplexity_rows = [{"model": row.model, "method": row.method, "pattern": row.pattern,
                        "target_sparsity": row.target_sparsity, "sparsity": round(row.sparsity, 4),
                        "protocol": protocol, "perplexity": round(value, 4)}
                       for row in rows for protocol, value in row.perplexity.items()]
    block_rows = [{"method": f"{row.method} {row.pattern} {row.sparsity:.2f}", "block": block,
                   "relative_error": error}
                  for row in rows for block, error in enumerate(row.block_relative_error)]
    accuracy_rows = [{"model": row.model, "method": row.method, "pattern": row.pattern,
                      "target_sparsity": row.target_sparsity, "sparsity": round(row.sparsity, 4),
                      "protocol": protocol, "top1": round(value, 4)}
                     for row in rows for protocol, value in row.accuracy.items()]
    measured = [speed for speed in speed_rows if not speed.skipped]
    plots = PLOTS + ((ACCURACY_PLOT,) if accuracy_rows else ())
    with atomic_directory(output) as staging:
        write_csv(staging / "perplexity.csv", perplexity_rows)
        if accuracy_rows:
            write_csv(staging / "accuracy.csv", accuracy_rows)
            plot_quality_vs_sparsity(accuracy_rows, staging / ACCURACY_PLOT, "top1")
        write_csv(staging / "block_errors.csv", block_rows)
        write_csv(staging / "speedups.csv", [
            {**speed.model_dump(exclude={"ratios", "spread", "skipped"}),
             **{f"{case}_speedup": ratio for case, ratio in speed.ratios.items()},
             **{f"{case}_speedup_{end}": value for case, spread in speed.spread.items()
                for end, value in zip(("low", "high"), spread, strict=True)}} for speed in measured])
        (staging / "results.md").write_text(results_markdown(rows, speed_rows))
        plot_quality_vs_sparsity(perplexity_rows, staging / PLOTS[0], "perplexity")
        plot_block_errors_by_method(block_rows, staging / PLOTS[1])
        plot_speedups(measured, staging / PLOTS[2])
        write_report_page(staging, *table_cells(rows, speed_rows), rows, plots)
    return output


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
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
