"""The steps of a pruning job, each a plain function with typed inputs and outputs; `pruning.job` runs them in order.

  fetch                    a model source       -> ModelRef (a local safetensors folder and its digest)
  calibrate                ModelRef             -> CalibrationRef (token windows, or a vision model's images, and
                                                   their manifest, in the store)
  prepare_evaluation_text  ModelRef             -> EvaluationText (an evaluation text's token stream, in the store)
  prepare_evaluation_images ModelRef            -> EvaluationImages (a vision model's evaluation images and labels)
  prune                    ModelRef, windows    -> PrunedBlocks (the engine, block by block, into the block store)
  assemble                 PrunedBlocks         -> AssembledModel (the pruned checkpoint, in the store)
  evaluate                 ModelRef, text       -> Evaluation (perplexity, in the store, keyed by the weights)
  evaluate_images          ModelRef, images     -> ImageEvaluation (top-1/top-5 or k-NN accuracy, keyed likewise)
  evaluate_zero_shot       ModelRef             -> ZeroShotEvaluation (lm-eval accuracies, keyed by the weights)
  export                   AssembledModel, record -> the output folder (weights linked, record, model card)

Each step finds its artifact in the store when an earlier run (by any driver) made it, and says so (`reused`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from pruning.assemble import write_pruned_checkpoint
from pruning.blocks.report import EngineReport
from pruning.card import CARD_FILE, model_card
from pruning.config import CalibrationConfig, EngineConfig, EvaluationConfig, ZeroShotConfig
from pruning.data.calibration import (
    MANIFEST_FILE,
    CalibrationManifest,
    build_calibration_set,
    load_calibration_manifest,
    load_calibration_set,
    save_calibration_set,
    tokenize_corpus,
)
from pruning.data.corpora import TextProvenance, load_corpus, source_fingerprint
from pruning.data.images import ImageManifest, image_manifest, load_image_set, prepare_images, sample_indices
from pruning.engine import PruneEngine
from pruning.errors import ConfigError
from pruning.evaluation.accuracy import AccuracyResult, image_accuracy
from pruning.evaluation.perplexity import PerplexityResult, perplexity
from pruning.evaluation.zero_shot import ZeroShotResult, zero_shot, zero_shot_fingerprint
from pruning.io import atomic_directory, exclusive_output, link_or_copy, sha256_text, write_json
from pruning.machine import Machine
from pruning.methods.registry import MethodConfig
from pruning.models.access import StreamedModel
from pruning.models.sources import (
    ModelOrigin,
    ModelSource,
    load_model,
    load_tokenizer,
    model_origin,
    resolve_model_dir,
    source_digest,
    tokenizer_digest,
)
from pruning.models.vision import image_processor, is_image_model, load_vision_model, module_named_checkpoint
from pruning.record import PruneRecord, StructuredSummary
from pruning.store import ArtifactStore

TOKENS_FILE = "tokens.safetensors"
IMAGES_FILE = "images.safetensors"  # pixel_values (N, C, H, W) float32, and labels (N,) for evaluation images
IMAGE_MANIFEST_FILE = "images.json"
CHECKPOINT_DIRECTORY = "checkpoint"


class StepOutput(BaseModel):
    """What a step hands to the next: small typed records of paths and digests, never tensors. `reused`: the
    artifact came from the store, nothing was computed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reused: bool = False

    @property
    def note(self) -> str | None:
        """What a driver shows about the step's reuse (Prefect: the state's message), or None."""
        return "reused from the artifact store" if self.reused else None


class ModelRef(StepOutput):
    """A model as a local safetensors folder, identified by the digest of its weights."""

    spec: str
    path: Path
    digest: str
    num_blocks: int
    origin: ModelOrigin
    modality: Literal["text", "image"] = "text"


class CalibrationRef(StepOutput):
    """Token windows (`tokens.safetensors`) or images (`images.safetensors`) with their manifest."""

    directory: Path
    manifest: CalibrationManifest | ImageManifest

    @property
    def holds_images(self) -> bool:
        return isinstance(self.manifest, ImageManifest)

    @property
    def inputs_digest(self) -> str:
        """What identifies the calibration inputs in a block key."""
        if isinstance(self.manifest, ImageManifest):
            return sha256_text(self.manifest.model_dump_json())
        return self.manifest.windows_sha256

    def inputs(self) -> torch.Tensor:
        """The engine's calibration inputs: token windows (N, L) or pixel values (N, C, H, W)."""
        if isinstance(self.manifest, ImageManifest):
            return load_file(str(self.directory / IMAGES_FILE))["pixel_values"]
        return load_calibration_set(self.directory).input_ids


class EvaluationText(StepOutput):
    """An evaluation text tokenized once (documents joined with "\\n\\n", no special tokens), with its provenance."""

    key: str
    path: Path
    tokens: int
    provenance: TextProvenance


class PrunedBlocks(StepOutput):
    key: str
    directory: Path
    report: EngineReport
    model_parameters: int

    @property
    def note(self) -> str | None:
        done = self.report.blocks_reused
        return f"reused {done} of {done + self.report.blocks_computed} blocks from the artifact store" if done else None


class AssembledModel(ModelRef):
    structured: StructuredSummary | None


class Exported(StepOutput):
    path: Path


class Evaluation(StepOutput):
    result: PerplexityResult


class ZeroShotEvaluation(StepOutput):
    result: ZeroShotResult


class EvaluationImages(StepOutput):
    """A vision model's evaluation images, preprocessed once by its processor, with their labels."""

    key: str
    path: Path
    manifest: ImageManifest


class ImageEvaluation(StepOutput):
    result: AccuracyResult


def fetch(spec: str, cache_dir: Path) -> ModelRef:
    """The model as a local safetensors folder (downloaded or converted once into `cache_dir`)."""
    directory = resolve_model_dir(ModelSource.parse(spec, allow_unpinned=True), cache_dir)
    config = load_json_config(directory)
    blocks = config.get("num_hidden_layers", config.get("n_layer"))
    if not isinstance(blocks, int) or blocks < 1:
        raise ConfigError(f"model: '{directory}/config.json' gives {blocks!r} decoder blocks; a model to prune "
                          "needs at least one (num_hidden_layers)")
    image = is_image_model(directory)
    if image:  # the engine streams tensors under the module names (see pruning.models.vision)
        directory = module_named_checkpoint(directory, source_digest(directory), cache_dir)
    return ModelRef(spec=spec, path=directory, digest=source_digest(directory), num_blocks=blocks,
                    origin=model_origin(directory), modality="image" if image else "text")


def load_json_config(directory: Path) -> dict[str, object]:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"model: '{directory / 'config.json'}' is not readable JSON ({error}); re-save or "
                          "re-download the model") from None
    return config if isinstance(config, dict) else {}


def calibrate(model: ModelRef, calibration: CalibrationConfig, store: ArtifactStore, cache_dir: Path) -> CalibrationRef:
    """N seeded windows of L tokens from the calibration text, tokenized by the model's tokenizer (a vision model:
    N seeded images of the calibration source, prepared by its image processor)."""
    if model.modality == "image":
        return _calibration_images(model, calibration, store)
    directory = store.directory("calibration", store.key("calibration", tokenizer_digest(model.path), calibration,
                                                         source_fingerprint(calibration.source)))
    reused = (directory / MANIFEST_FILE).is_file()
    if not reused:
        corpus = load_corpus(calibration.source, "calibration", cache_dir, calibration.text_field, "calibration.source")
        save_calibration_set(build_calibration_set(corpus, load_tokenizer(model.path), calibration.num_samples,
                                                   calibration.seqlen, calibration.seed), directory)
    return CalibrationRef(directory=directory, manifest=load_calibration_manifest(directory), reused=reused)


def prepare_evaluation_text(model: ModelRef, evaluation: EvaluationConfig, store: ArtifactStore,
                            cache_dir: Path) -> EvaluationText:
    """The evaluation text's token stream; a text shorter than one window is refused here, before any pruning."""
    key = store.key("evaluation-text", tokenizer_digest(model.path), evaluation.dataset, evaluation.text_field,
                    source_fingerprint(evaluation.dataset))
    directory = store.directory("evaluation-text", key)
    record = directory / "text.json"
    reused = record.is_file()
    if not reused:
        corpus = load_corpus(evaluation.dataset, "evaluation", cache_dir, evaluation.text_field, "evaluation.dataset")
        with atomic_directory(directory) as staging:
            save_file({"input_ids": tokenize_corpus(corpus, load_tokenizer(model.path))}, str(staging / TOKENS_FILE))
            write_json(staging / "text.json", corpus.provenance.model_dump(mode="json"))
    tokens = load_file(str(directory / TOKENS_FILE))["input_ids"]
    if tokens.numel() < evaluation.seqlen:
        raise ConfigError(f"evaluation.dataset: '{evaluation.dataset}' holds {tokens.numel()} tokens, fewer than "
                          f"one window of {evaluation.seqlen}")
    return EvaluationText(key=key, path=directory / TOKENS_FILE, tokens=int(tokens.numel()), reused=reused,
                          provenance=TextProvenance.model_validate_json(record.read_text()))


def _calibration_images(model: ModelRef, calibration: CalibrationConfig, store: ArtifactStore) -> CalibrationRef:
    images = load_image_set(calibration.source, "calibration.source")
    processor = image_processor(model.path)
    directory = store.directory("calibration", store.key("calibration-images", images.sha256, calibration,
                                                         sha256_text(processor.to_json_string())))
    reused = (directory / IMAGE_MANIFEST_FILE).is_file()
    if not reused:
        indices = sample_indices(images.count, calibration.num_samples, calibration.seed, "calibration.num_samples")
        pixels = prepare_images(model.path, images, indices, "calibration.source", processor)
        with atomic_directory(directory) as staging:
            save_file({"pixel_values": pixels.contiguous()}, str(staging / IMAGES_FILE))
            write_json(staging / IMAGE_MANIFEST_FILE,
                       image_manifest(images, indices, calibration.seed, processor, pixels).model_dump(mode="json"))
    manifest = ImageManifest.model_validate_json((directory / IMAGE_MANIFEST_FILE).read_text())
    return CalibrationRef(directory=directory, manifest=manifest, reused=reused)


def prepare_evaluation_images(model: ModelRef, evaluation: EvaluationConfig, store: ArtifactStore) -> EvaluationImages:
    """A vision model's evaluation images (all of the source, or the first max_windows) and their labels."""
    images = load_image_set(evaluation.dataset, "evaluation.dataset")
    if images.labels is None:
        raise ConfigError(f"evaluation.dataset: '{evaluation.dataset}' has no labels (images need class subfolders, a "
                          "label column or a labels array) and accuracy needs them; give a labelled image set")
    processor = image_processor(model.path)
    # max_windows caps the images only when it was set: its default (64) is meant for text windows
    cap = evaluation.max_windows if "max_windows" in evaluation.model_fields_set else None
    key = store.key("evaluation-images", images.sha256, evaluation.dataset, cap,
                    sha256_text(processor.to_json_string()))
    directory = store.directory("evaluation-images", key)
    reused = (directory / IMAGE_MANIFEST_FILE).is_file()
    if not reused:
        indices = torch.arange(min(images.count, cap or images.count))
        pixels = prepare_images(model.path, images, indices, "evaluation.dataset", processor)
        with atomic_directory(directory) as staging:
            save_file({"pixel_values": pixels.contiguous(), "labels": images.labels[indices].contiguous()},
                      str(staging / IMAGES_FILE))
            write_json(staging / IMAGE_MANIFEST_FILE,
                       image_manifest(images, indices, None, processor, pixels).model_dump(mode="json"))
    return EvaluationImages(key=key, path=directory / IMAGES_FILE, reused=reused,
                            manifest=ImageManifest.model_validate_json((directory / IMAGE_MANIFEST_FILE).read_text()))


class BlocksKey(BaseModel):
    """What a run's blocks are keyed by (and `run.json` in their folder describes)."""

    model_digest: str
    method: MethodConfig
    calibration_windows: str | None
    engine: dict[str, object]
    machine: dict[str, object]


def prune(model: ModelRef, calibration: CalibrationRef | None, method: MethodConfig, engine: EngineConfig,
          machine: Machine, store: ArtifactStore, trust_remote_code: bool = False,
          on_block: Callable[[int], None] | None = None) -> PrunedBlocks:
    """Every block pruned by the engine, each kept in the block store under a key of everything that determines it
    (finished blocks of an earlier or killed run are reused); `on_block(i)` after each block."""
    windows = calibration.inputs_digest if calibration is not None else None
    parts = BlocksKey(model_digest=model.digest, method=method, calibration_windows=windows,
                      engine=engine.result_fields(), machine=machine.result_fields())
    key = store.key("blocks", parts)
    access = StreamedModel(model.path, trust_remote_code)  # config.json and tensor headers; no weights yet
    inputs = calibration.inputs() if calibration is not None else None
    with exclusive_output(store.directory("blocks", key), "artifacts_dir",
                          "wait for it; a rerun then reuses its blocks"), \
            PruneEngine(access, method, engine, machine, inputs, store.blocks(key, parts)) as pruning:
        report = pruning.run(on_block)
    return PrunedBlocks(key=key, directory=store.directory("blocks", key), report=report,
                        model_parameters=access.parameter_count(), reused=report.blocks_computed == 0)


def assemble(model: ModelRef, blocks: PrunedBlocks, structured: bool, store: ArtifactStore,
             trust_remote_code: bool = False) -> AssembledModel:
    """The pruned checkpoint (a plain Hugging Face folder) from the finished blocks, keyed by the blocks' key; its
    digest is its weights' sha256, as any folder's."""
    directory = store.directory("models", store.key("models", blocks.key))
    result = directory / "result.json"
    if result.is_file():
        return AssembledModel.model_validate_json(result.read_text()).model_copy(update={"reused": True})
    with atomic_directory(directory) as staging:
        checkpoint = staging / CHECKPOINT_DIRECTORY
        checkpoint.mkdir()
        summary = write_pruned_checkpoint(StreamedModel(model.path, trust_remote_code),
                                          store.blocks(blocks.key), checkpoint, structured)
        assembled = AssembledModel(spec=str(directory / CHECKPOINT_DIRECTORY), path=directory / CHECKPOINT_DIRECTORY,
                                   digest=source_digest(checkpoint), num_blocks=model.num_blocks, origin=model.origin,
                                   structured=summary)
        write_json(staging / "result.json", assembled.model_dump(mode="json"))
    return assembled


def evaluate(model: ModelRef, text: EvaluationText, evaluation: EvaluationConfig, machine: Machine,
             store: ArtifactStore) -> Evaluation:
    """Token perplexity of `model` on the text (block by block from disk), keyed by the weights' digest."""
    key = store.key("evaluations", model.digest, text.key, evaluation, machine.torch_device.type)

    def compute() -> PerplexityResult:
        tokens = load_file(str(text.path))["input_ids"]
        with tempfile.TemporaryDirectory(dir=store.root, prefix="evaluation-") as scratch:
            result = perplexity(StreamedModel(model.path), tokens, evaluation.seqlen, evaluation.dataset,
                                evaluation.max_windows, evaluation.batch_size, machine.torch_device,
                                scratch=Path(scratch))
        return result.model_copy(update={"provenance": text.provenance})

    store.root.mkdir(parents=True, exist_ok=True)
    result, reused = store.cached("evaluations", key, PerplexityResult, compute)
    return Evaluation(result=result, reused=reused)


def evaluate_images(model: ModelRef, images: EvaluationImages, evaluation: EvaluationConfig, machine: Machine,
                    store: ArtifactStore) -> ImageEvaluation:
    """Top-1 (top-5) accuracy of a vision classifier, or a backbone's k-NN accuracy, keyed by the weights' digest."""
    key = store.key("image-evaluations", model.digest, images.key, evaluation.batch_size, machine.torch_device.type)

    def compute() -> AccuracyResult:
        tensors = load_file(str(images.path))
        network = load_vision_model(model.path).to(machine.torch_device)
        return image_accuracy(network, tensors["pixel_values"], tensors["labels"], evaluation.dataset,
                              evaluation.batch_size, machine.torch_device)

    store.root.mkdir(parents=True, exist_ok=True)
    result, reused = store.cached("image-evaluations", key, AccuracyResult, compute)
    return ImageEvaluation(result=result, reused=reused)


def evaluate_zero_shot(model: ModelRef, config: ZeroShotConfig, machine: Machine,
                       store: ArtifactStore) -> ZeroShotEvaluation:
    """lm-eval's zero-shot tasks on the whole model in memory, keyed by the weights' digest and the task files."""
    key = store.key("zero-shot", model.digest, config, zero_shot_fingerprint(config.tasks, config.data_dir),
                    machine.torch_device.type)

    def compute() -> ZeroShotResult:
        return zero_shot(load_model(model.path, torch.float32), load_tokenizer(model.path), config.tasks,
                         config.data_dir, config.limit, config.batch_size, machine.torch_device)

    result, reused = store.cached("zero-shot", key, ZeroShotResult, compute)
    return ZeroShotEvaluation(result=result, reused=reused)


def export(model: AssembledModel, record: PruneRecord, output_dir: Path) -> Exported:
    """The output folder, in place at once: the checkpoint's files hard-linked from the store (copied across file
    systems), the run record and the model card. A folder that already holds these weights and a record of the same
    outcome (a rerun, a resumed sweep) is left as it is."""
    if (output_dir / CARD_FILE).is_file() and source_digest(output_dir) == model.digest:
        try:
            existing = PruneRecord.read_if_present(output_dir)
        except ConfigError:  # a record of another pruneflow version: replaced
            existing = None
        if existing is not None and existing.outcome() == record.outcome():
            return Exported(path=output_dir, reused=True)
    with atomic_directory(output_dir) as staging:
        shutil.copytree(model.path, staging, dirs_exist_ok=True, copy_function=link_or_copy)
        record.write(staging)
        (staging / CARD_FILE).write_text(model_card(record))
    return Exported(path=output_dir)
