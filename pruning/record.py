"""The run record of a pruned model, `pruneflow.json`: one typed model, built in one place (`PruneRecord.build`, by
the job's last step), written beside the weights and read back by attribute (the command line, the flows, the
report, MLflow tracking, the DVC stages, the model card and the speed benchmark all read this class, never the raw
JSON).

What the record says is split by how it may differ between two runs of the same job: everything but `run` is
determined by the job, the inputs and the machine fields of `machine` (equal across drivers and reruns, times in
the engine report aside); `run` holds what this run did: its step times, peak memory, and which blocks it reused.
"""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pruning.blocks.report import EngineReport
from pruning.config import PruneJob
from pruning.data.calibration import CalibrationManifest
from pruning.data.images import ImageManifest
from pruning.errors import ConfigError
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.evaluation.zero_shot import ZeroShotResult
from pruning.io import code_digest, write_json
from pruning.machine import Machine
from pruning.models.sources import ModelOrigin

RUN_RECORD_FILE = "pruneflow.json"


def peak_rss_megabytes() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def software_versions() -> dict[str, str]:
    import transformers

    from pruning import __version__

    return {"pruneflow": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunInputs(_Record):
    """What the pruned weights were computed from, by digest (each evaluation text's provenance is in its
    `PerplexityResult`)."""

    model: str
    model_digest: str
    origin: ModelOrigin = ModelOrigin()
    calibration: CalibrationManifest | ImageManifest | None  # None for a data-free method
    code_digest: str


class StructuredSummary(_Record):
    """What a structured method removed: column groups per block by unit kind, and the parameters before/after."""

    removed_groups_per_block: dict[str, int]
    parameters_before: int
    parameters_after: int


class RunFacts(_Record):
    """What this run did, as opposed to what it computed: wall seconds per step, peak memory."""

    step_seconds: dict[str, float] = Field(default={}, description="wall time of each step of the job, by name")
    peak_rss_mb: float


class PruneRecord(_Record):
    """Everything about one pruned model: the job, what it removed, the engine's report, its inputs by digest, the
    machine and software, its perplexities and zero-shot accuracies (a vision model: its image accuracies; dense too,
    when asked), and the run's facts."""

    config: PruneJob
    method: str
    pattern: str
    target_sparsity: float
    decoder_linear_sparsity: float  # fraction of the decoder blocks' linear weights removed
    decoder_linear_parameters: int
    model_parameters: int
    remaining_parameters: int
    engine: EngineReport
    machine: Machine
    inputs: RunInputs
    versions: dict[str, str]
    structured: StructuredSummary | None = None
    perplexity: list[PerplexityResult] = []
    dense_perplexity: list[PerplexityResult] = []
    zero_shot: ZeroShotResult | None = None
    dense_zero_shot: ZeroShotResult | None = None
    accuracy: list[AccuracyResult] = []
    dense_accuracy: list[AccuracyResult] = []
    run: RunFacts

    @classmethod
    def build(cls, job: PruneJob, report: EngineReport, machine: Machine, model_parameters: int, model_digest: str,
              origin: ModelOrigin, calibration: CalibrationManifest | ImageManifest | None,
              structured: StructuredSummary | None, perplexity: list[PerplexityResult],
              dense_perplexity: list[PerplexityResult], zero_shot: ZeroShotResult | None,
              dense_zero_shot: ZeroShotResult | None, step_seconds: dict[str, float],
              accuracy: list[AccuracyResult] | None = None,
              dense_accuracy: list[AccuracyResult] | None = None) -> PruneRecord:
        return cls(config=job, method=job.method.method, pattern=job.method.pattern,
                   target_sparsity=job.method.target_sparsity, decoder_linear_sparsity=report.decoder_linear_sparsity,
                   decoder_linear_parameters=report.linear_parameters, model_parameters=model_parameters,
                   remaining_parameters=model_parameters - report.linear_removed, engine=report, machine=machine,
                   inputs=RunInputs(model=job.model, model_digest=model_digest, origin=origin, calibration=calibration,
                                    code_digest=code_digest()),
                   versions=software_versions(), structured=structured, perplexity=perplexity,
                   dense_perplexity=dense_perplexity, zero_shot=zero_shot, dense_zero_shot=dense_zero_shot,
                   accuracy=accuracy or [], dense_accuracy=dense_accuracy or [],
                   run=RunFacts(step_seconds=step_seconds, peak_rss_mb=peak_rss_megabytes()))

    def headline(self) -> str:
        """The result in a few characters, for a console row: the first perplexity or accuracy."""
        if self.perplexity:
            return f"ppl {self.perplexity[0].perplexity:.2f}"
        return f"top-1 {self.accuracy[0].top1:.4f}" if self.accuracy else ""

    def outcome(self) -> dict[str, object]:
        """The record without what only says how this run went: `run`, the engine's stage times and how many blocks
        it computed or reused (a rerun that reused every block has the outcome of the run that computed them)."""
        return self.model_dump(mode="json", exclude={"run": True, "engine": {
            "capture_seconds", "forward_seconds", "solve_seconds", "io_seconds", "blocks_computed", "blocks_reused"}})

    def write(self, directory: Path) -> Path:
        """`directory/pruneflow.json`, written atomically."""
        path = directory / RUN_RECORD_FILE
        write_json(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def read(cls, directory: Path) -> PruneRecord:
        path = directory / RUN_RECORD_FILE
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as error:
            raise ConfigError(f"{path}: not a run record of this pruneflow ({error.error_count()} fields differ, "
                              f"first: {'.'.join(map(str, error.errors()[0]['loc']))}); it was written by "
                              "another version: prune that model again (e.g. `dvc repro -f <prune stage>`)") from None

    @classmethod
    def read_if_present(cls, directory: Path) -> PruneRecord | None:
        """The record of a pruned model directory, or None for a model pruneflow did not write."""
        return cls.read(directory) if (directory / RUN_RECORD_FILE).is_file() else None
