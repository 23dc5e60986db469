"""Benchmark (one NVIDIA GPU): an 8B-shaped model pruned by the streamed engine, block by block from disk.

Writes a random Llama with Llama-3-8B's shapes (32 blocks, hidden 4096, MLP 14336, 32 heads / 8 KV heads,
vocabulary 128,256, untied head; bf16, ~16 GB) to disk block by block, then prunes it with SparseGPT 50% on
128 x 2048 random-token calibration: the block being pruned, its statistics and the solve on the GPU (forward
in bf16, statistics and solve in fp32), activations on the GPU, every pruned block written to disk at once.
Records the seconds of every block, peak GPU memory (allocator) and peak host RSS, then writes the pruned
checkpoint (hard links from the block store) and checks that it has every tensor.

  .venv/bin/python bench/gpu_scale.py [--blocks 32] [--work /tmp/gpu-scale]   -> bench/results/gpu_scale.json

Meant to finish within 8 minutes on one H100/H200. Without CUDA it writes nothing and says so.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocabulary": 128256}


def write_model(directory: Path, blocks: int, device: Any) -> float:
    """The random bf16 checkpoint, one shard per block, generated on the GPU; returns the seconds it took."""
    import torch
    from transformers import LlamaConfig

    from pruning.models.checkpoint import ShardedWriter

    started = time.perf_counter()
    hidden, intermediate = SHAPES["hidden"], SHAPES["intermediate"]
    kv = SHAPES["kv_heads"] * hidden // SHAPES["heads"]
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
              "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (intermediate, hidden),
              "mlp.up_proj": (intermediate, hidden), "mlp.down_proj": (hidden, intermediate)}
    directory.mkdir(parents=True)
    writer = ShardedWriter(directory, blocks + 1)
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, device=device) * 0.02).to(torch.bfloat16).cpu()

    for index in range(blocks):
        tensors = {f"model.layers.{index}.{name}.weight": random(*shape) for name, shape in shapes.items()}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{index}.{norm}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        writer.write(index, tensors)
    writer.write(blocks, {"model.embed_tokens.weight": random(SHAPES["vocabulary"], hidden),
                          "lm_head.weight": random(SHAPES["vocabulary"], hidden),
                          "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)})
    writer.finish()
    LlamaConfig(vocab_size=SHAPES["vocabulary"], hidden_size=hidden, intermediate_size=intermediate,
                num_hidden_layers=blocks, num_attention_heads=SHAPES["heads"], num_key_value_heads=SHAPES["kv_heads"],
                max_position_embeddings=8192, tie_word_embeddings=False,
                dtype="bfloat16").save_pretrained(directory)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-scale"))
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "gpu_scale.json")
    arguments = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured, nothing written")
        return
    from pruning.assemble import write_pruned_checkpoint
    from pruning.blocks.store import BlockStore
    from pruning.config import EngineConfig
    from pruning.engine import PruneEngine
    from pruning.io import write_json
    from pruning.machine import Machine
    from pruning.methods.registry import method_config
    from pruning.models.access import StreamedModel

    device = torch.device("cuda")
    shutil.rmtree(arguments.work, ignore_errors=True)
    model_dir, output = arguments.work / "model", arguments.work / "pruned"
    write_seconds = write_model(model_dir, arguments.blocks, device)
    checkpoint_bytes = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))

    started = time.perf_counter()
    model = StreamedModel(model_dir)
    input_ids = torch.randint(0, SHAPES["vocabulary"], (arguments.samples, arguments.seqlen),
                              generator=torch.Generator().manual_seed(0))
    options = EngineConfig(device="cuda", forward_dtype="bfloat16", batch_size=8)
    machine = Machine.resolve(options.device, options.forward_dtype)
    store = BlockStore(arguments.work / "blocks" / "run")
    engine = PruneEngine(model, method_config({"method": "sparsegpt", "sparsity": 0.5}), options, machine, input_ids,
                         store)
    torch.cuda.reset_peak_memory_stats(device)
    block_seconds = []
    for index in range(arguments.blocks):
        block_started = time.perf_counter()
        engine.prune_block(index)
        torch.cuda.synchronize(device)
        block_seconds.append(time.perf_counter() - block_started)
        print(f"block {index}: {block_seconds[-1]:.1f} s", flush=True)
    prune_seconds = time.perf_counter() - started
    output.mkdir()
    assemble_started = time.perf_counter()
    write_pruned_checkpoint(model, store, output, structured=False)
    from pruning.models.checkpoint import CheckpointReader

    complete = set(CheckpointReader(output).names) == set(CheckpointReader(model_dir).names)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "shapes": SHAPES,
        "blocks": arguments.blocks, "calibration": f"{arguments.samples}x{arguments.seqlen} random tokens",
        "method": "sparsegpt 50% unstructured", "forward_dtype": "bfloat16", "checkpoint_bytes": checkpoint_bytes,
        "write_model_seconds": write_seconds, "prune_seconds": prune_seconds, "block_seconds": block_seconds,
        "first_block_seconds": block_seconds[0], "median_block_seconds": sorted(block_seconds)[len(block_seconds) // 2],
        "assemble_seconds": time.perf_counter() - assemble_started, "pruned_checkpoint_complete": complete,
        "activations_in_memory": engine.report.activations_in_memory,
        "activation_device": str(engine.memory.device), "machine": machine.model_dump(mode="json"),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_host_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "engine": engine.report.model_dump(mode="json", exclude={"layers"}),
    }
    engine.close()
    write_json(arguments.output, result)
    print(json.dumps({key: value for key, value in result.items() if key != "block_seconds"}, indent=2))


if __name__ == "__main__":
    main()
