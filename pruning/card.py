"""The model card (`README.md`: YAML metadata, then Markdown) of a pruned model folder, written from its run record
with `huggingface_hub`'s own card types, so that the folder can be pushed to a hub as it is and the hub shows its
base model, license, datasets and every perplexity (`model-index`)."""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pruning.data.corpora import TextProvenance
from pruning.data.images import ImageManifest
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.record import PruneRecord

CARD_FILE = "README.md"
HUB_DATASET_PREFIX = "hub:"  # TextProvenance.source of a hub dataset: hub:<org>/<name>[/<config>]


def _hub_dataset(provenance: TextProvenance | None) -> tuple[str, str | None] | None:
    """(hub id, config) of a text that came from a hub dataset; None for files and package assets."""
    if provenance is None or not provenance.source.startswith(HUB_DATASET_PREFIX):
        return None
    parts = provenance.source[len(HUB_DATASET_PREFIX):].split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def model_name(record: PruneRecord) -> str:
    base = (record.config.base_model or record.inputs.model).rsplit("/", 1)[-1]
    return f"{base}-{record.method}-{record.pattern.replace(':', 'of')}-{record.target_sparsity:g}"


def _eval_result(result: PerplexityResult) -> EvalResult:
    hub = _hub_dataset(result.provenance)
    provenance = result.provenance
    return EvalResult(task_type="text-generation", task_name="Language modelling (token perplexity)",
                      dataset_type=hub[0] if hub else result.settings.dataset,
                      dataset_name=provenance.source if provenance else result.settings.dataset,
                      dataset_config=hub[1] if hub else None,
                      dataset_split=provenance.split if provenance else None,
                      dataset_revision=provenance.revision if provenance else None,
                      metric_type="perplexity", metric_name=f"perplexity, {result.protocol}",
                      metric_value=round(result.perplexity, 4))


def _accuracy_result(result: AccuracyResult) -> EvalResult:
    return EvalResult(task_type="image-classification", task_name="Image classification", dataset_type=result.protocol,
                      dataset_name=result.protocol, metric_type="accuracy", metric_name=f"top-1, {result.protocol}",
                      metric_value=round(result.top1, 4))


def card_data(record: PruneRecord) -> ModelCardData:
    """The card's metadata: base model, license, languages, hub datasets, tags and `model-index`."""
    texts = [item.provenance for item in record.perplexity]
    calibration = record.inputs.calibration
    if calibration is not None and not isinstance(calibration, ImageManifest):
        texts.append(calibration.corpus)
    datasets = sorted({hub[0] for hub in map(_hub_dataset, texts) if hub is not None})
    results = [_eval_result(item) for item in record.perplexity] + [_accuracy_result(item) for item in record.accuracy]
    if record.zero_shot is not None:
        results += [EvalResult(task_type="multiple-choice", task_name=f"{task} (lm-eval, 0-shot)", dataset_type=task,
                               dataset_name=task, metric_type="accuracy", metric_value=round(values["acc"], 4))
                    for task, values in record.zero_shot.tasks.items() if "acc" in values]
    origin = record.inputs.origin
    return ModelCardData(
        base_model=record.config.base_model, license=origin.license, language=list(origin.languages) or None,
        datasets=datasets or None, library_name="transformers",
        pipeline_tag="image-classification" if record.accuracy else "text-generation",
        tags=["pruneflow", "pruned", record.method, f"sparsity-{record.target_sparsity:g}", record.pattern],
        model_name=model_name(record) if results else None, eval_results=results or None)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")  # a protocol holds '|'; unescaped it would split the table's cells


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(_cell(cell) for cell in row)} |" for row in rows)]


def _what_was_removed(record: PruneRecord) -> str:
    structured = record.structured
    if structured is not None:
        groups = ", ".join(f"{count} {kind}" for kind, count in sorted(structured.removed_groups_per_block.items()))
        return (f"whole groups were removed from each block ({groups} per block) and the weights sliced to their "
                f"new shapes, which `config.json` states: {structured.parameters_after:,} of "
                f"{structured.parameters_before:,} parameters remain, a physically smaller dense model.")
    return (f"{record.decoder_linear_sparsity:.4f} of the blocks' linear weights are zero (stored as zeros in "
            f"dense tensors); {record.remaining_parameters:,} of {record.model_parameters:,} parameters remain "
            "nonzero. The file is as large as the dense model's: sparsity buys quality-per-parameter here, and "
            "speed only with a sparse kernel.")


def _results(record: PruneRecord) -> list[str]:
    lines = ["## Results", ""]
    dense = {item.protocol: item.perplexity for item in record.dense_perplexity}
    rows = [(f"{item.perplexity:.3f}", f"{dense[item.protocol]:.3f}" if item.protocol in dense else "not measured",
             f"`{item.protocol}`") for item in record.perplexity]
    dense_accuracy = {item.protocol: item.top1 for item in record.dense_accuracy}
    accuracy = [(f"{item.top1:.4f}", f"{item.top5:.4f}" if item.top5 is not None else "-",
                 f"{dense_accuracy[item.protocol]:.4f}" if item.protocol in dense_accuracy else "not measured",
                 f"`{item.protocol}`") for item in record.accuracy]
    if accuracy:
        lines += _table(("top-1", "top-5", "dense top-1", "protocol"), accuracy)
    else:
        lines += _table(("perplexity", "dense", "protocol"), rows) if rows else ["No perplexity was measured."]
    zero_shot = record.zero_shot
    if zero_shot:
        settings = zero_shot.settings
        dense_tasks = record.dense_zero_shot.tasks if record.dense_zero_shot else {}
        lines += ["", f"Zero-shot (lm-eval {settings.lm_eval_version}, 0-shot, limit {settings.limit}):", ""]
        lines += _table(("task", "acc", "dense acc", "documents"),
                        [(task, f"{values.get('acc', float('nan')):.4f}",
                          f"{dense_tasks[task]['acc']:.4f}" if "acc" in dense_tasks.get(task, {}) else "not measured",
                          int(values.get("documents", 0))) for task, values in zero_shot.tasks.items()])
        lines += ["", f"Average accuracy: {zero_shot.average_accuracy:.4f}."]
    return lines


def _calibration(record: PruneRecord) -> list[str]:
    manifest = record.inputs.calibration
    if manifest is None:
        return ["## Calibration", "", "None: the method is data-free."]
    if isinstance(manifest, ImageManifest):
        return ["## Calibration", "",
                f"{manifest.images} of the {manifest.source_images} images of `{manifest.source}` (seed "
                f"{manifest.seed}, `{manifest.sha256}`), prepared by the model's {manifest.processor} "
                f"(settings sha256 `{manifest.processor_sha256}`) to {tuple(manifest.shape)}."]
    return ["## Calibration", "",
            f"{manifest.num_samples} windows of {manifest.seqlen} tokens (seed {manifest.seed}) from "
            f"`{manifest.corpus.source}` (`{manifest.corpus.digest}`); windows sha256 `{manifest.windows_sha256}`."]


def _provenance(record: PruneRecord) -> list[str]:
    inputs, versions = record.inputs, record.versions
    base = record.config.base_model
    source = f"`{inputs.model}`" + (f", {inputs.origin.conversion}" if inputs.origin.conversion else "")
    return ["## Provenance", "",
            (f"Base model [{base}](https://huggingface.co/{base}), through " if base else "Base model ") + source +
            f" (digest `{inputs.model_digest}`); pruning code digest `{inputs.code_digest}`; "
            + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) + ".",
            "The full record is `pruneflow.json` in this folder."]


def _loading(record: PruneRecord) -> list[str]:
    if isinstance(record.inputs.calibration, ImageManifest) or record.accuracy:
        return ["```python", "import transformers  # 5.x: the folder holds transformers 5's module names",
                "config = transformers.AutoConfig.from_pretrained('<this folder>')",
                "model = getattr(transformers, config.architectures[0]).from_pretrained('<this folder>')", "```"]
    return ["```python", "from transformers import AutoModelForCausalLM",
            "model = AutoModelForCausalLM.from_pretrained('<this folder>')", "```"]


def model_card(record: PruneRecord) -> str:
    """The card's text from a run record (`pruneflow.json`, evaluation results included when present)."""
    options = record.config.method.model_dump(exclude={"method", "pattern", "sparsity"})
    engine = record.config.engine.model_dump(exclude_defaults=True, exclude={"device", "forward_dtype"})
    lines = [
        f"# {model_name(record)}", "",
        f"{record.config.base_model or record.inputs.model} pruned in one shot, layer by layer, by pruneflow "
        f"{record.versions.get('pruneflow', '')}: method `{record.method}`, pattern `{record.pattern}`, target "
        f"sparsity {record.target_sparsity:g}. " + _what_was_removed(record), "",
        "## Method settings", "",
        *(_table(("setting", "value"), sorted(options.items())) if options else ["Defaults."]), "",
        *([f"Engine settings beyond the defaults: {engine}.", ""] if engine else []),
        f"Computed on {record.machine.summary()} (device `{record.machine.device}`, float32 matmul precision "
        f"`{record.machine.float32_matmul_precision}`).", "",
        *_results(record), "",
        *_calibration(record), "",
        *_provenance(record), "",
        *_loading(record), "",
    ]
    return str(ModelCard.from_template(card_data(record), template_str="---\n{{ card_data }}\n---\n\n{{ text }}",
                                       text="\n".join(lines)))
