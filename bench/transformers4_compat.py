"""Benchmark: a pruned SmolLM2 folder read by transformers 4.57 and by transformers 5, logits and perplexity compared.

Makes a separate venv with transformers 4.57.x (torch 2.13.0 from the local file; nothing else of pruneflow),
loads each model there and in this process (transformers 5), and compares, on the same token ids:
  - the tokenizers: the ids each version gives for the same text, its class, its model_max_length;
  - the logits of one window (max |Δ|) and the perplexity over several windows of 256 tokens.
Four folders: the original (pruneflow's dequantized SmolLM2), the pruned model given, and each with the legacy
keys taken out of config.json (`rope_theta`, `torch_dtype`), which is what pruneflow wrote before it wrote them:
4.57 reads those with the wrong rope theta, so their rows show what the keys are for.

  .venv/bin/python bench/transformers4_compat.py --pruned runs/smollm2-135m/sparsegpt-unstructured-0.5
                                                                  -> bench/results/transformers4_compat.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from venvs import REPO, VENVS, make_venv

TRANSFORMERS_4 = "transformers==4.57.6"
WINDOWS, SEQLEN, DOCUMENTS = 8, 256, 400

# Runs in both interpreters: only torch, transformers and safetensors, no pruneflow.
MEASURE = r'''
import json, math, sys
import torch, transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, text_path, ids_path, logits_path = sys.argv[1:5]
torch.set_num_threads(2)
tokenizer = AutoTokenizer.from_pretrained(folder)
text = open(text_path).read()
own_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
ids = load_file(ids_path)["input_ids"]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32) if transformers.__version__ >= "5" else \
    AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
model.eval()
nll, tokens = 0.0, 0
with torch.no_grad():
    for index, window in enumerate(ids):
        logits = model(input_ids=window[None]).logits[0]
        if index == 0:
            save_file({"logits": logits.contiguous()}, logits_path)
        nll += torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum").item()
        tokens += window.numel() - 1
rope = getattr(model.config, "rope_theta", None)
if rope is None:
    rope = (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta")
print(json.dumps({"transformers": transformers.__version__, "perplexity": math.exp(nll / tokens),
                  "rope_theta": rope, "tokenizer_class": type(tokenizer).__name__,
                  "model_max_length": tokenizer.model_max_length, "token_ids": own_ids[: len(ids) * ids.shape[1]]}))
'''


def measure(python: str, folder: Path, scratch: Path, name: str) -> tuple[dict[str, Any], Any]:
    from safetensors.torch import load_file

    logits_path = scratch / f"{name}.safetensors"
    completed = subprocess.run([python, str(scratch / "measure.py"), str(folder), str(scratch / "text.txt"),
                                str(scratch / "ids.safetensors"), str(logits_path)],
                               check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1]), load_file(str(logits_path))["logits"]


def without_legacy_keys(pruned: Path, target: Path) -> Path:
    """A copy of the folder (weights linked) whose config.json lacks what only transformers 4 reads."""
    target.mkdir()
    for path in pruned.iterdir():
        if path.is_file():
            (target / path.name).symlink_to(path.resolve())
    config = json.loads((pruned / "config.json").read_text())
    for key in ("rope_theta", "torch_dtype", "rope_scaling", "rope_local_base_freq"):
        config.pop(key, None)
    (target / "config.json").unlink()
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruned", type=Path, required=True, help="a pruned SmolLM2 folder (pruneflow output)")
    parser.add_argument("--venv", type=Path, default=VENVS / "transformers-4.57")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "transformers4_compat.json")
    arguments = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    from pruning.config import DEFAULT_MODEL
    from pruning.data.corpora import load_corpus
    from pruning.io import write_json
    from pruning.machine import Machine
    from pruning.models.sources import load_tokenizer
    from pruning.steps import fetch

    original = fetch(DEFAULT_MODEL, REPO / ".pruneflow" / "cache").path
    python4 = str(make_venv(arguments.venv, [TRANSFORMERS_4, "safetensors", "sentencepiece"]))
    corpus = load_corpus("wiki-summaries", "evaluation", REPO / ".pruneflow" / "cache", None)
    text = "\n\n".join(corpus.documents[:DOCUMENTS])
    ids = torch.tensor(load_tokenizer(original)(text, add_special_tokens=False, verbose=False)["input_ids"])
    if ids.numel() < WINDOWS * SEQLEN:
        raise SystemExit(f"{DOCUMENTS} documents give {ids.numel()} tokens, fewer than {WINDOWS} x {SEQLEN}")
    windows = ids[: WINDOWS * SEQLEN].view(WINDOWS, SEQLEN)
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        (scratch / "measure.py").write_text(MEASURE)
        (scratch / "text.txt").write_text(text)
        save_file({"input_ids": windows.contiguous()}, str(scratch / "ids.safetensors"))
        folders = {"original": original, "pruned": arguments.pruned.resolve()}
        for name, folder in list(folders.items()):
            folders[f"{name}_without_legacy_keys"] = without_legacy_keys(folder, scratch / f"{name}-legacy")
        for name, folder in folders.items():
            v5, logits5 = measure(sys.executable, folder, scratch, f"{name}-5")
            v4, logits4 = measure(python4, folder, scratch, f"{name}-4")
            models[name] = {
                "folder": f"{folders[name.removesuffix('_without_legacy_keys')]}"
                          + (" (a copy without the legacy keys)" if name.endswith("_without_legacy_keys") else ""),
                "max_abs_logit_difference": float((logits5 - logits4).abs().max()),
                "same_token_ids": v4.pop("token_ids") == v5.pop("token_ids"),
                "perplexity_ratio_4_over_5": v4["perplexity"] / v5["perplexity"],
                "transformers_5": v5, "transformers_4": v4}
    write_json(arguments.output, {
        "what": "the same folders read by transformers 4.57 and 5: logits of one window, perplexity over windows",
        "text": f"wiki-summaries evaluation split, first {DOCUMENTS} documents, {WINDOWS} windows of {SEQLEN} "
                "tokens (ids from transformers 5's tokenizer, given to both)",
        "machine": Machine.resolve("cpu", "float32").summary(), "models": models})
    for name, result in models.items():
        print(f"{name:28s} max|dlogit| {result['max_abs_logit_difference']:.2e}  ppl 5: "
              f"{result['transformers_5']['perplexity']:.4f}  4: {result['transformers_4']['perplexity']:.4f}  "
              f"same ids: {result['same_token_ids']}")


if __name__ == "__main__":
    main()
