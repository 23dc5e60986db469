"""The run record of a pruned model, `pruneflow.json`: one typed model, built in one place (`PruneRecord.build`),
written beside the weights and read back by attribute (the command line, the flows, the report, MLflow tracking,
the DVC stages, the model card and the speed benchmark all read this class, never the raw JSON)."""

from __future__ import annotations

import platform
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from pruning.engine import LayerReport, PruneReport
from pruning.errors import ConfigError
from pruning.evaluation.perplexity import PerplexityResult
from pruning.io import code_digest, write_json

if TYPE_CHECKING:
    from pruning.config import PruneJob
    from pruning.data.calibration import CalibrationSet

RECORD_FILE = "pruneflow.json"


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


class CalibrationManifest(_Record):
    """The calibration windows: their text source, tokenizer, sampling and the digest of the token ids."""

    corpus: dict[str, Any]  # the corpus's provenance (source, revision or sha256, field)
    tokenizer: dict[str, Any]
    seed: int
    num_samples: int
    seqlen: int
    corpus_tokens: int
    documents: int
    separator: str
    windows_sha256: str


class RunInputs(_Record):
    """What the pruned weights were computed from, by digest."""

    model: str
    model_digest: str
    calibration: CalibrationManifest | None  # None for a data-free method
    code_digest: str
    evaluation: list[dict[str, Any]] = []  # each evaluation text's provenance


class EngineSummary(_Record):
    """The engine's stage times, block counts and one report per pruned linear (`PruneReport`, as recorded)."""

    capture_seconds: float
    forward_seconds: float
    solve_seconds: float
    io_seconds: float
    blocks_computed: int
    blocks_reused: int
    activations_in_memory: bool
    layers: list[LayerReport]
    reconstruction: list[dict[str, float]] = []  # per block, with a block reconstruction
    block_sparsity: list[float] = []  # per block, with a layer budget

    @classmethod
    def of(cls, report: PruneReport) -> EngineSummary:
        return cls(capture_seconds=report.capture_seconds, forward_seconds=report.forward_seconds,
                   solve_seconds=report.solve_seconds, io_seconds=report.io_seconds,
                   blocks_computed=report.blocks_computed, blocks_reused=report.blocks_reused,
                   activations_in_memory=report.activations_in_memory, layers=report.layers,
                   reconstruction=report.reconstruction, block_sparsity=report.block_sparsity)

    def block_errors(self) -> list[float]:
        """Mean relative reconstruction error of each block's linears, in block order (empty for data-free
        methods, which measure no error)."""
        by_block: dict[int, list[float]] = {}
        for layer in self.layers:
            if layer.relative_error is not None:
                by_block.setdefault(layer.block, []).append(layer.relative_error)
        return [sum(errors) / len(errors) for _, errors in sorted(by_block.items())]


_PERPLEXITIES = TypeAdapter(list[PerplexityResult])


class PruneRecord(_Record):
    """Everything about one pruned model: the job, what it removed, the engine's report, its inputs by digest,
    the software, and (once evaluated) its perplexities, zero-shot accuracies and stage times."""

    config: dict[str, Any]  # the job as validated (PruneJob), in JSON form
    method: str
    pattern: str
    target_sparsity: float
    decoder_linear_sparsity: float  # fraction of the decoder blocks' linear weights removed
    decoder_linear_parameters: int
    model_parameters: int
    remaining_parameters: int
    engine: EngineSummary
    peak_rss_mb: float
    threads: int
    inputs: RunInputs
    versions: dict[str, str]
    structured: dict[str, Any] | None = None  # shapes before/after, for structured methods
    perplexity: list[PerplexityResult] = []
    dense_perplexity: list[PerplexityResult] = []
    zero_shot: dict[str, Any] | None = None  # lm-eval's per-task results (see pruning.evaluation.zero_shot)
    dense_zero_shot: dict[str, Any] | None = None
    timings: dict[str, float] = {}

    @classmethod
    def build(cls, job: PruneJob, report: PruneReport, model_parameters: int, model_digest: str,
              calibration: CalibrationSet | None, structured: dict[str, Any] | None) -> PruneRecord:
        """The record of a finished prune, before evaluation (see `with_results`)."""
        return cls(config=job.model_dump(mode="json"), method=job.method.method, pattern=job.method.pattern,
                   target_sparsity=job.method.target_sparsity, decoder_linear_sparsity=report.decoder_linear_sparsity,
                   decoder_linear_parameters=report.linear_parameters, model_parameters=model_parameters,
                   remaining_parameters=model_parameters - report.linear_removed, engine=EngineSummary.of(report),
                   peak_rss_mb=peak_rss_megabytes(), threads=torch.get_num_threads(),
                   inputs=RunInputs(model=job.model, model_digest=model_digest,
                                    calibration=(CalibrationManifest.model_validate(calibration.manifest)
                                                 if calibration is not None else None),
                                    code_digest=code_digest()),
                   versions=software_versions(), structured=structured)

    def with_results(self, perplexity: list[Any], dense_perplexity: list[Any], zero_shot: dict[str, Any] | None,
                     dense_zero_shot: dict[str, Any] | None, evaluation: list[dict[str, Any]] | None = None,
                     timings: dict[str, float] | None = None) -> PruneRecord:
        """This record with its evaluation results (perplexities as `PerplexityResult`s or their dicts)."""
        update: dict[str, Any] = {
            "perplexity": _PERPLEXITIES.validate_python(perplexity),
            "dense_perplexity": _PERPLEXITIES.validate_python(dense_perplexity),
            "zero_shot": zero_shot, "dense_zero_shot": dense_zero_shot}
        if evaluation is not None:
            update["inputs"] = self.inputs.model_copy(update={"evaluation": evaluation})
        if timings is not None:
            update["timings"] = timings
        return self.model_copy(update=update)

    def write(self, directory: Path) -> Path:
        """`directory/pruneflow.json`, written atomically."""
        path = directory / RECORD_FILE
        write_json(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def read(cls, directory: Path) -> PruneRecord:
        path = directory / RECORD_FILE
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as error:
            raise ConfigError(f"{path}: not a run record of this pruneflow ({error.error_count()} fields differ, "
                              f"first: {'.'.join(map(str, error.errors()[0]['loc']))}); it was written by "
                              "another version: prune that model again (e.g. `dvc repro -f <prune stage>`)") from None

    @classmethod
    def read_if_present(cls, directory: Path) -> PruneRecord | None:
        """The record of a pruned model directory, or None for a model pruneflow did not write."""
        return cls.read(directory) if (directory / RECORD_FILE).is_file() else None
