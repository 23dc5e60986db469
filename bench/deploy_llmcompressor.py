"""Benchmark: the deployment path pruneflow -> llm-compressor (FP8) -> vLLM, its first two steps checked here.

pruneflow's pruned folder is a plain Hugging Face checkpoint, so llm-compressor quantizes it like any other. In a venv
of its own (llmcompressor pins transformers <= 5.17), this script:
  1. quantizes the pruned folder with `oneshot` and the FP8_DYNAMIC scheme (FP8 weights per channel, activations
     per token at run time; lm_head kept), data-free, and saves it compressed (compressed-tensors `float-quantized`);
  2. records the saved config: a `quantization_config` that vLLM reads, whose `sparsity_config` must be empty
     (vLLM refuses a set one since compressed-tensors dropped its sparse compressors);
  3. reloads it with transformers (decompressed), and compares with the pruned fp32 model on the same token ids:
     the zeros kept (fraction of exact zeros in the decoder linears), perplexity over 8 windows of 256 tokens, and
     the checkpoint size.
Step 3 of the path, `vllm serve <folder>`, needs a GPU (vLLM's CPU build is not on PyPI for this machine): the
README gives the command.

  .venv/bin/python bench/deploy_llmcompressor.py --pruned /tmp/smol-sgpt-0.5
                                                            -> bench/results/deploy_llmcompressor.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from venvs import REPO, VENVS, make_venv, run_json

LLM_COMPRESSOR = ["llmcompressor==0.14.0.1"]
WINDOWS, SEQLEN, DOCUMENTS = 8, 256, 400

# Runs in the llm-compressor venv: no pruneflow there.
QUANTIZE = r'''
import json, math, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pruned, output, ids_path = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
started = time.perf_counter()
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier

model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)
oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"]))
model.save_pretrained(output, save_compressed=True)
quantize_seconds = time.perf_counter() - started
config = json.loads((output / "config.json").read_text())
quantization = config.get("quantization_config", {})

def measure(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = load_file(ids_path)["input_ids"]
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for window in ids:
            logits = model(input_ids=window[None]).logits[0]
            nll += torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum").item()
            tokens += window.numel() - 1
    weights = [module.weight for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and ".layers." in name]
    zeros = sum(int((weight == 0).sum()) for weight in weights) / sum(weight.numel() for weight in weights)
    return {"perplexity": math.exp(nll / tokens), "decoder_linear_zero_fraction": zeros,
            "checkpoint_bytes": sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))}

import compressed_tensors, llmcompressor, transformers
print(json.dumps({
    "versions": {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                 "transformers": transformers.__version__, "torch": torch.__version__},
    "scheme": "FP8_DYNAMIC (lm_head kept)", "quantize_seconds": quantize_seconds,
    "quant_method": quantization.get("quant_method"), "format": quantization.get("format"),
    # vLLM refuses a checkpoint whose sparsity_config is set; compressed-tensors writes an empty one.
    "sparsity_config": quantization.get("sparsity_config", config.get("sparsity_config")),
    "pruned": measure(pruned), "quantized": measure(output)}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruned", type=Path, required=True, help="a pruned SmolLM2 folder (pruneflow output)")
    parser.add_argument("--venv", type=Path, default=VENVS / "llmcompressor")
    parser.add_argument("--quantized", type=Path, default=REPO / ".pruneflow" / "deploy" / "fp8-dynamic",
                        help="where the FP8 checkpoint is written (replaced)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "deploy_llmcompressor.json")
    arguments = parser.parse_args()

    import shutil

    import torch
    from safetensors.torch import save_file

    from pruning.data.corpora import load_corpus
    from pruning.io import write_json
    from pruning.machine import Machine
    from pruning.models.sources import load_tokenizer
    from pruning.record import PruneRecord

    record = PruneRecord.read(arguments.pruned)
    python = make_venv(arguments.venv, LLM_COMPRESSOR, without=("torchvision",))
    corpus = load_corpus("wiki-summaries", "evaluation", REPO / ".pruneflow" / "cache", None)
    text = "\n\n".join(corpus.documents[:DOCUMENTS])
    ids = torch.tensor(load_tokenizer(arguments.pruned)(text, add_special_tokens=False, verbose=False)["input_ids"])
    shutil.rmtree(arguments.quantized, ignore_errors=True)
    arguments.quantized.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        ids_path = Path(scratch) / "ids.safetensors"
        save_file({"input_ids": ids[: WINDOWS * SEQLEN].view(WINDOWS, SEQLEN).contiguous()}, str(ids_path))
        result = run_json(python, QUANTIZE, str(arguments.pruned.resolve()), str(arguments.quantized), str(ids_path))
    write_json(arguments.output, {
        "what": "a pruneflow-pruned SmolLM2 quantized FP8_DYNAMIC by llm-compressor, saved compressed, reloaded",
        "pruned_model": f"{record.method} {record.pattern} {record.target_sparsity:g} ({arguments.pruned})",
        "text": f"wiki-summaries evaluation split, first {DOCUMENTS} documents, {WINDOWS} windows of {SEQLEN} tokens",
        "machine": Machine.resolve("cpu", "float32").summary(), **result})
    print(f"quantized in {result['quantize_seconds']:.1f} s ({result['quant_method']}, {result['format']}, "
          f"sparsity_config: {result['sparsity_config']!r}); ppl {result['pruned']['perplexity']:.3f} -> "
          f"{result['quantized']['perplexity']:.3f}; zeros {result['pruned']['decoder_linear_zero_fraction']:.4f} -> "
          f"{result['quantized']['decoder_linear_zero_fraction']:.4f}; bytes {result['pruned']['checkpoint_bytes']} "
          f"-> {result['quantized']['checkpoint_bytes']}")


if __name__ == "__main__":
    main()
