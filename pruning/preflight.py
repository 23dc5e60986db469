"""What every driver checks before heavy work: what a job's values alone cannot tell.

`check_job` (before anything is fetched): the model source exists, the text sources exist, the zero-shot task files
are there (or the hub is reachable), the device is present, and the output, cache and artifact folders can be
written without destroying anything. `check_model` (once the model's folder is there, before any weight is read):
its architecture is supported, a structured budget fits its heads, the windows fit its context. Each problem is
one line that names its field; all of a job's problems are raised together as one `ConfigError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pruning.config import (
    DEFAULT_ARTIFACTS_DIR,
    DEFAULT_CACHE_DIR,
    DEFAULT_MODEL,
    CalibrationConfig,
    EvaluationConfig,
    PruneJob,
    ZeroShotConfig,
)
from pruning.data.corpora import check_text_readable, check_text_source
from pruning.data.images import ImageSet, check_image_source, load_image_set, looks_like_images, prepare_images
from pruning.errors import ConfigError
from pruning.evaluation.zero_shot import check_zero_shot_tasks
from pruning.io import check_free_space, check_output_path
from pruning.machine import resolve_device
from pruning.methods.structured import StructuredBudget
from pruning.models.architectures import ADAPTERS, adapter_for_model_type
from pruning.models.shrink import structured_layout
from pruning.models.sources import HUB_PREFIX, ModelSource
from pruning.models.vision import is_image_model

ZERO_SHOT_FOR_IMAGES = ("zero_shot: lm-eval's tasks need a language model and this model takes images; leave the "
                        "tasks out (its accuracy comes from the evaluation images)")


def _problem(field: str, check: Callable[..., object], *arguments: Any) -> list[str]:
    """[] if `check(*arguments)` passes, else its message under `field` (messages that name their field keep it)."""
    try:
        check(*arguments)
    except ConfigError as error:
        return [f"{field}: {line}" if field else line for line in str(error).splitlines()]
    return []


def job_problems(job: PruneJob) -> list[str]:
    """Every problem `check_job` would raise, one line each; a local model's architecture and structured budget too
    (from its config.json, before a fetch that may convert its weights)."""
    problems = field_problems(job.model_dump(), job.method.needs_calibration)
    local = _local_path(job.model)
    if local is not None and (local / "config.json").is_file() and not any(
            problem.startswith("model:") for problem in problems):  # a broken folder is reported once, as broken
        problems += _problem("", check_architecture, local, job.method)
    return problems


def field_problems(fields: Mapping[str, Any], needs_calibration: bool = True) -> list[str]:
    """The checks of `check_job` on a job's fields as given (a mapping, before or without validation: the command
    line lists these beside pydantic's own problems, so that one run names every mistake). Absent fields take
    `PruneJob`'s defaults; fields of the wrong type are left to pydantic."""
    def given(tree: Mapping[str, Any], name: str, default: Any) -> Any:
        value = tree.get(name, default) if isinstance(tree, Mapping) else default
        return value if value is not None else default

    problems: list[str] = []
    model = given(fields, "model", DEFAULT_MODEL)
    if isinstance(model, str):
        problems += _problem("model", check_model_exists, model, bool(given(fields, "allow_unpinned", False)))
    takes_images = _takes_images(model)
    image_model = _local_path(model) if takes_images else None
    if image_model is not None:
        processor_problems = _problem("", check_image_processor, image_model)
        problems += processor_problems
        image_model = None if processor_problems else image_model  # its sources' images cannot be checked
    source = given(given(fields, "calibration", {}), "source", CalibrationConfig().source)
    if needs_calibration and isinstance(source, str):
        problems += _source_problems(source, given(given(fields, "calibration", {}), "text_field", None),
                                     "calibration.source", takes_images, image_model)
    evaluations = given(fields, "evaluation", [EvaluationConfig()])
    for index, evaluation in enumerate(evaluations if isinstance(evaluations, list | tuple) else []):
        settings = evaluation.model_dump() if isinstance(evaluation, EvaluationConfig) else evaluation
        dataset = given(settings, "dataset", EvaluationConfig().dataset)
        if isinstance(dataset, str):
            problems += _source_problems(dataset, given(settings, "text_field", None), f"evaluation.{index}.dataset",
                                         takes_images, image_model)
    zero_shot = given(fields, "zero_shot", None)
    if zero_shot is not None and takes_images:
        problems.append(ZERO_SHOT_FOR_IMAGES)
    tasks = given(zero_shot, "tasks", ZeroShotConfig().tasks) if zero_shot is not None else None
    if isinstance(tasks, list | tuple) and all(isinstance(task, str) and task.strip() for task in tasks):
        data_dir = given(zero_shot, "data_dir", None)
        problems += _problem("", check_zero_shot_tasks, tuple(tasks), Path(data_dir) if data_dir else None)
    device = given(given(fields, "engine", {}), "device", "auto")
    if isinstance(device, str):
        problems += _problem("", resolve_device, device)
    inputs = {"model": _local_path(model), "calibration.source": _local_path(source) if needs_calibration else None}
    folders = {field: given(fields, field, default)
               for field, default in (("cache_dir", DEFAULT_CACHE_DIR), ("artifacts_dir", DEFAULT_ARTIFACTS_DIR))}
    output = given(fields, "output_dir", None)
    if isinstance(output, str | Path):
        problems += _problem("", check_output_path, Path(output), "output_dir", True,
                             bool(given(fields, "overwrite", False)), {**inputs, **folders})
    for field, folder in folders.items():
        if isinstance(folder, str | Path):
            problems += _problem("", check_output_path, Path(folder), field, True, True, {"model": inputs["model"]},
                                 False)
    return problems


def _takes_images(model: object) -> bool | None:
    """Whether the model takes images, where its config.json can be read before it is fetched (a local folder);
    None where that is known only once it is fetched (a hub model). Packaged GGUF models are language models."""
    path = _local_path(model)
    if path is not None and (path / "config.json").is_file():
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (ValueError, AttributeError):  # config.json that is not a JSON mapping: its own check reports it
            return None
        modalities = {adapter.modality for adapter in ADAPTERS if model_type in adapter.model_types}
        return modalities == {"image"} if modalities else None  # an unsupported type: its own check reports it
    return None if isinstance(model, str) and model.startswith(HUB_PREFIX) else False


def _source_problems(source: str, text_field: str | None, field: str, takes_images: bool | None,
                     model_dir: Path | None = None) -> list[str]:
    """A calibration or evaluation source that suits the model: text for a language model, images for a vision
    model (`takes_images` None: whichever it is; `check_model` matches them once the model is fetched), whose first
    image the model's processor makes into something the model takes (given a local `model_dir`)."""
    if looks_like_images(source):
        if takes_images is False:
            return [f"{field}: '{source}' holds images, and the model is a language model; give a text source"]
        return _problem("", check_image_source, source, field) or \
            (_problem("", check_first_image, source, model_dir, field) if model_dir is not None else [])
    if takes_images:
        return _problem("", check_image_source, source, field)
    return _problem(field, check_text_source, source) or _problem("", check_text_readable, source, text_field, field)


def check_image_processor(model_dir: Path) -> None:
    """The vision model has an image processor, and it makes a blank RGB image into the size the model takes."""
    from PIL import Image

    blank = ImageSet("a blank 64x64 image", 1, lambda _index: Image.new("RGB", (64, 64)), None, (), lambda: "")
    prepare_images(model_dir, blank, torch.arange(1), "model")


def check_first_image(source: str, model_dir: Path, field: str) -> None:
    """The source's first image, prepared by the model's own processor, has the channels and size the model takes
    (one image decoded: the rest are checked as they are prepared)."""
    prepare_images(model_dir, load_image_set(source, field), torch.arange(1), field)


def check_sources_suit_the_model(job: PruneJob, model_dir: Path) -> None:
    """Once the model is fetched: its calibration and evaluation sources are images exactly when it takes images,
    and a vision model's processor makes their first images into what it takes (a hub model's config and processor
    are only here now)."""
    takes_images = is_image_model(model_dir)
    if takes_images:
        check_image_processor(model_dir)
    sources = [("calibration.source", job.calibration.source)] if job.method.needs_calibration else []
    sources += [(f"evaluation.{index}.dataset", item.dataset) for index, item in enumerate(job.evaluation)]
    problems = [problem for field, source in sources if looks_like_images(source) != takes_images or takes_images
                for problem in _source_problems(source, None, field, takes_images, model_dir)]
    if job.zero_shot is not None and takes_images:
        problems.append(ZERO_SHOT_FOR_IMAGES)
    if problems:
        raise ConfigError("\n".join(problems))


def _local_path(source: object) -> Path | None:
    """A model or text source that names a local file or folder (not hf://, pypi:// or a named corpus)."""
    if not isinstance(source, str) or "://" in source:
        return None
    path = Path(source).expanduser()
    return path if path.exists() else None


def check_model_exists(spec: str, allow_unpinned: bool) -> None:
    ModelSource.parse(spec, allow_unpinned).check_exists()


def check_job(job: PruneJob) -> None:
    """Raise one `ConfigError` listing every problem of `job` that the filesystem shows (see the module docstring)."""
    problems = job_problems(job)
    if problems:
        raise ConfigError("\n".join(problems))


def model_context_length(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions"):
        if key in config:
            return int(config[key])
    return None


def check_model(job: PruneJob, model_dir: Path) -> None:
    """The fetched model suits the job: a supported architecture, a structured budget its heads allow, and
    calibration and evaluation windows within its context. Reads config.json only."""
    check_architecture(model_dir, job.method)
    check_sources_suit_the_model(job, model_dir)
    if not is_image_model(model_dir):
        check_context_length(model_dir, job.calibration.seqlen if job.method.needs_calibration else None,
                             [evaluation.seqlen for evaluation in job.evaluation])
    check_skip_layers(model_dir, job.engine.skip_layers)
    check_disk_space(job, model_dir)


def check_disk_space(job: PruneJob, model_dir: Path) -> None:
    """The artifact store holds the pruned blocks and the assembled model (x2 the weights, x3 with OATS' factored
    form); the output is hard-linked from it, or copied where it lies on another file system."""
    weights = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    forms = 2 if job.method.method == "oats" else 1
    check_free_space(job.artifacts_dir, weights * (1 + forms), "artifacts_dir", "the pruned blocks and model")
    if _device_of(job.output_dir) != _device_of(job.artifacts_dir):
        check_free_space(job.output_dir, weights * forms, "output_dir", "the pruned model")


def _device_of(path: Path) -> int:
    ancestor = Path(path).expanduser().resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor.stat().st_dev


def linear_names(model_dir: Path) -> list[str]:
    """The full names of every prunable linear (`model.layers.3.mlp.up_proj`), from config.json alone."""
    config = json.loads((model_dir / "config.json").read_text())
    adapter = adapter_for_model_type(str(config.get("model_type", "unknown")))
    blocks = int(config.get("num_hidden_layers", config.get("n_layer", 0)) or 0)
    return [f"{adapter.blocks_path}.{index}.{name}" for index in range(blocks) for name in adapter.linear_names]


def check_skip_layers(model_dir: Path, patterns: tuple[str, ...]) -> None:
    """Each --skip-layer pattern must match a linear of the model (a misspelled one would silently prune it)."""
    if not patterns:
        return
    from fnmatch import fnmatch

    names = linear_names(model_dir)
    unmatched = [pattern for pattern in patterns if not any(fnmatch(name, pattern) for name in names)]
    if unmatched:
        raise ConfigError(f"engine.skip_layers: {', '.join(repr(p) for p in unmatched)} matches no linear of the "
                          f"model; its linears are named like {names[0]}, ..., {names[-1]}")


def check_local_architecture(spec: str, field: str = "model") -> None:
    """`check_architecture` for a model source that is a local folder, before any weights load (a GGUF or hub
    source is checked once fetched); the error names `field`."""
    path = Path(spec).expanduser()
    if "://" in spec or not path.is_dir():
        return
    try:
        check_architecture(path)
    except ConfigError as error:
        raise ConfigError(f"{field}: {str(error).removeprefix('model: ')}") from None


def check_architecture(model_dir: Path, method: object = None) -> None:
    """An unsupported architecture, or a structured budget the model cannot take, fails from config.json."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"model: '{model_dir / 'config.json'}' is not readable JSON ({error}); re-save or "
                          "re-download the model") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model: '{model_dir / 'config.json'}' holds {type(config).__name__}, not a mapping of "
                          "settings; re-save or re-download the model")
    adapter = adapter_for_model_type(str(config.get("model_type", "unknown")))
    blocks = config.get("num_hidden_layers", config.get("n_layer"))
    if blocks is not None and (not isinstance(blocks, int) or blocks < 1):
        raise ConfigError(f"model: '{model_dir / 'config.json'}' says num_hidden_layers: {blocks}; a model needs at "
                          "least one block (a damaged or hand-edited config?)")
    if isinstance(method, StructuredBudget):
        from transformers import AutoConfig

        structured_layout(adapter, method, AutoConfig.from_pretrained(model_dir))


def check_context_length(model_dir: Path, calibration_seqlen: int | None, evaluation_seqlens: list[int],
                         evaluation_field: str = "evaluation") -> None:
    """Calibration and evaluation windows must fit in the model's context."""
    max_positions = model_context_length(model_dir)
    if max_positions is None:
        return
    if calibration_seqlen is not None and calibration_seqlen > max_positions:
        raise ConfigError(f"calibration.seqlen: {calibration_seqlen} exceeds the model's context of "
                          f"{max_positions} tokens; use at most {max_positions}")
    for index, seqlen in enumerate(evaluation_seqlens):
        if seqlen > max_positions:
            raise ConfigError(f"{evaluation_field}.{index}.seqlen: {seqlen} exceeds the model's context of "
                              f"{max_positions} tokens; use at most {max_positions}")
