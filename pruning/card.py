"""The model card (`README.md`, Hugging Face's format: YAML metadata, then Markdown) of a pruned model directory,
written from its run record so that the directory can be pushed to a hub as it is."""

from __future__ import annotations

from typing import Any

import yaml

from pruning.record import PruneRecord

CARD_FILE = "README.md"
HUB_PREFIX = "hf://"


def _base_model(source: str) -> str | None:
    """The hub id of the base model when it came from the hub (`hf://org/name@rev` -> `org/name`)."""
    return source[len(HUB_PREFIX):].split("@")[0] if source.startswith(HUB_PREFIX) else None


def _metadata(record: PruneRecord) -> dict[str, Any]:
    metadata: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                                "tags": ["pruneflow", "pruned", record.method, f"sparsity-{record.target_sparsity:g}",
                                         record.pattern]}
    base = _base_model(record.inputs.model)
    if base is not None:
        metadata["base_model"] = base
    return metadata


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(str(cell) for cell in row)} |" for row in rows)]


def _results(record: PruneRecord) -> list[str]:
    lines = ["## Results", ""]
    dense = {item.protocol: item.perplexity for item in record.dense_perplexity}
    rows = [(f"{item.perplexity:.3f}", f"{dense[item.protocol]:.3f}" if item.protocol in dense else "-",
             f"`{item.protocol}`") for item in record.perplexity]
    lines += _table(("perplexity", "dense", "protocol"), rows) if rows else ["No perplexity was measured."]
    zero_shot = record.zero_shot
    if zero_shot:
        settings = zero_shot.settings
        lines += ["", f"Zero-shot (lm-eval {settings.lm_eval_version}, 0-shot, limit {settings.limit}):", ""]
        lines += _table(("task", "acc", "documents"),
                        [(task, f"{values.get('acc', float('nan')):.4f}", int(values.get("documents", 0)))
                         for task, values in zero_shot.tasks.items()])
        lines += ["", f"Average accuracy: {zero_shot.average_accuracy:.4f}."]
    return lines


def _calibration(record: PruneRecord) -> list[str]:
    manifest = record.inputs.calibration
    if manifest is None:
        return ["## Calibration", "", "None: the method is data-free."]
    return ["## Calibration", "",
            f"{manifest.num_samples} windows of {manifest.seqlen} tokens (seed {manifest.seed}) from "
            f"`{manifest.corpus.source}` (`{manifest.corpus.digest}`); windows sha256 `{manifest.windows_sha256}`."]


def model_card(record: PruneRecord) -> str:
    """The card's text from a run record (`pruneflow.json`, evaluation results included when present)."""
    options = record.config.method.model_dump(exclude={"method", "pattern", "sparsity"})
    engine = record.config.engine.model_dump(exclude_defaults=True, exclude={"device", "forward_dtype"})
    versions = record.versions
    lines = [
        "---", yaml.safe_dump(_metadata(record), sort_keys=False).strip(), "---", "",
        f"# {record.inputs.model} pruned with {record.method}", "",
        f"Pruned in one shot, layer by layer, by pruneflow {versions.get('pruneflow', '')}: "
        f"method `{record.method}`, pattern `{record.pattern}`, target sparsity {record.target_sparsity:g}; "
        f"{record.decoder_linear_sparsity:.4f} of the decoder linears' weights are zero, "
        f"{record.remaining_parameters:,} of {record.model_parameters:,} parameters remain nonzero.", "",
        "## Method settings", "",
        *(_table(("setting", "value"), sorted(options.items())) if options else ["Defaults."]), "",
        *([f"Engine settings beyond the defaults: {engine}.", ""] if engine else []),
        f"Computed on {record.machine.summary()} (device `{record.machine.device}`, float32 matmul precision "
        f"`{record.machine.float32_matmul_precision}`).", "",
        *_results(record), "",
        *_calibration(record), "",
        "## Provenance", "",
        f"Base model `{record.inputs.model}` (digest `{record.inputs.model_digest}`); pruning code digest "
        f"`{record.inputs.code_digest}`; "
        + ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) + ".",
        "The full record is `pruneflow.json` in this directory.", "",
        "```python", "from transformers import AutoModelForCausalLM",
        "model = AutoModelForCausalLM.from_pretrained('<this directory>')", "```", "",
    ]
    return "\n".join(lines)
