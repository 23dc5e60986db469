"""Benchmark (one NVIDIA GPU): an 8B-shaped model pruned by the streamed engine, and pruned forms timed on CUDA.

Two phases in one prepared run (the device machine is lent for one short window; every result is written as soon as
it exists, so a command stopped at its limit still returns what it finished):
 1. `speed`: a model of Llama-3-8B's shapes cut to `--speed-blocks` blocks, pruned SparseGPT 2:4 and structured
    Wanda 50% (MLP neurons and KV groups) on random-token calibration, then the one benchmark every driver runs
    (`pruning.speed.benchmark`, CUDA, fp16) on both beside the dense model: the 2:4 semi-structured kernel and the
    physically smaller dense matrices against dense, paired in the same process.            -> gpu_speed.json
 2. `scale`: the full random Llama of Llama-3-8B's shapes (32 blocks, hidden 4096, MLP 14336, 32 heads / 8 KV heads,
    vocabulary 128,256, untied head; bf16, ~16 GB) written to disk block by block, pruned SparseGPT 50% on
    128 x 2048 random tokens: the block, its statistics and the solve on the GPU (forward in bf16, statistics and
    solve in fp32). Block outputs are not persisted to the block store (`engine.persist_activations: false`: no
    resume is wanted here, and it saves one 2 GiB write per block). The JSON is rewritten after every block: the
    seconds of each block, block 0's setup (the embeddings pass) apart, allocated and reserved GPU memory peaks,
    `torch.cuda.mem_get_info`, the matmul precision, peak host RSS; then the assembled checkpoint is checked.
                                                                                               -> gpu_scale.json
Results go to `$OUT` when it is set (the device tool brings that folder back), else to bench/results/.

  python bench/gpu_scale.py [--phases speed,scale] [--blocks 32] [--speed-blocks 2] [--work /tmp/gpu-scale]

On the device machine (python 3.12 with its own torch, transformers, safetensors, rich and huggingface_hub, but no
pydantic): carry pydantic's wheels and put them on the path, no install needed (`make device-wheels` writes them to
.device/wheels, which git ignores):
  run(carry=[".device"], command="PYTHONPATH=.device/site:. PYTHONUNBUFFERED=1 python3 bench/gpu_scale.py")
`.device/site` is those wheels unpacked (pure Python, and pydantic-core's cp312 manylinux build). Meant to end
within 9 minutes on one H100/H200: about 1.5 min of speed, then 32 blocks. Without CUDA it writes nothing and
says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocabulary": 128256}
DRY_RUN_SHAPES = {"hidden": 128, "intermediate": 448, "heads": 4, "kv_heads": 2, "vocabulary": 1024}


def results_folder(arguments: argparse.Namespace) -> Path:
    """$OUT when set; a dry run's results stay in its work folder, never beside the measured ones."""
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return arguments.work / "results" if arguments.dry_run else REPO / "bench" / "results"


def write_model(directory: Path, blocks: int, device: torch.device, shapes: dict[str, int]) -> float:
    """The random bf16 checkpoint, one shard per block, generated on the GPU; returns the seconds it took."""
    from transformers import LlamaConfig

    from pruning.models.checkpoint import ShardedWriter

    started = time.perf_counter()
    hidden, intermediate = shapes["hidden"], shapes["intermediate"]
    kv = shapes["kv_heads"] * hidden // shapes["heads"]
    linears = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
              "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (intermediate, hidden),
              "mlp.up_proj": (intermediate, hidden), "mlp.down_proj": (hidden, intermediate)}
    directory.mkdir(parents=True)
    writer = ShardedWriter(directory, blocks + 1)
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, device=device) * 0.02).to(torch.bfloat16).cpu()

    for index in range(blocks):
        tensors = {f"model.layers.{index}.{name}.weight": random(*shape) for name, shape in linears.items()}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{index}.{norm}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        writer.write(index, tensors)
    writer.write(blocks, {"model.embed_tokens.weight": random(shapes["vocabulary"], hidden),
                          "lm_head.weight": random(shapes["vocabulary"], hidden),
                          "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)})
    writer.finish()
    LlamaConfig(vocab_size=shapes["vocabulary"], hidden_size=hidden, intermediate_size=intermediate,
                num_hidden_layers=blocks, num_attention_heads=shapes["heads"], num_key_value_heads=shapes["kv_heads"],
                max_position_embeddings=8192, tie_word_embeddings=False,
                dtype="bfloat16").save_pretrained(directory)
    return time.perf_counter() - started


def random_calibration(samples: int, seqlen: int, vocabulary: int) -> torch.Tensor:
    return torch.randint(0, vocabulary, (samples, seqlen), generator=torch.Generator().manual_seed(0))


def gpu_memory(device: torch.device) -> dict[str, float]:
    """On CUDA, in GiB: the allocator's peaks (allocated: live tensors; reserved: what the caching allocator holds
    from the driver) and the driver's own free/total view."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
            "device_free_gb": free / 2**30, "device_total_gb": total / 2**30}


def precision() -> dict[str, Any]:
    return {"float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cuda_matmul_allow_bf16_reduced_precision_reduction":
                torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def engine_options(device: torch.device) -> Any:
    """Forwards in bf16 (statistics and solves stay fp32); no block outputs persisted: no resume is wanted here."""
    from pruning.config import EngineConfig

    return EngineConfig(device=device.type, forward_dtype="bfloat16", batch_size=8, persist_activations=False)


def prune_folder(model_dir: Path, method: dict[str, Any], input_ids: torch.Tensor, work: Path,
                 device: torch.device) -> Path:
    """`model_dir` pruned by `method` into `work/<method>`, with the run record the benchmark reads."""
    from pruning.assemble import write_pruned_checkpoint
    from pruning.blocks.store import BlockStore
    from pruning.config import PruneJob
    from pruning.engine import PruneEngine
    from pruning.machine import Machine
    from pruning.methods.registry import is_structured, method_config
    from pruning.models.access import StreamedModel
    from pruning.models.sources import model_origin
    from pruning.record import PruneRecord

    config = method_config(method)
    output = work / f"{config.method}-{config.pattern.replace(':', 'of')}"
    options = engine_options(device)
    machine = Machine.resolve(options.device, options.forward_dtype)
    model = StreamedModel(model_dir)
    started = time.perf_counter()
    with PruneEngine(model, config, options, machine, input_ids, BlockStore(work / "blocks" / output.name)) as engine:
        report = engine.run()
        output.mkdir(parents=True)
        structured = write_pruned_checkpoint(model, engine.store, output, structured=is_structured(config))
    job = PruneJob(model=str(model_dir), method=config, engine=options, output_dir=output)
    PruneRecord.build(job, report, machine, model.parameter_count(), "random", model_origin(model_dir), None,
                      structured, [], [], None, None, {"prune": time.perf_counter() - started}).write(output)
    return output


def speed_phase(arguments: argparse.Namespace, device: torch.device) -> None:
    from pruning.speed import SpeedSettings, benchmark

    work = arguments.work / "speed"
    shutil.rmtree(work, ignore_errors=True)
    dense = work / "dense"
    write_model(dense, arguments.speed_blocks, device, arguments.shapes)
    ids = random_calibration(32, 512, arguments.shapes["vocabulary"])
    pruned = [prune_folder(dense, method, ids, work, device) for method in
              ({"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4"},
               {"method": "structured-wanda", "sparsity": 0.5})]
    settings = SpeedSettings(devices=(device.type,), prefill_batches=(1, 8), prefill_tokens=2048,
                             decode_batches=(1, 16), decode_new_tokens=32, gemm_layers=3, rounds=7,
                             min_run_time=1, max_run_time=4)
    if arguments.dry_run:
        settings = settings.model_copy(update={"prefill_tokens": 64, "decode_new_tokens": 4, "rounds": 3,
                                               "min_run_time": 0.05, "max_run_time": 0.2})
    output = benchmark([dense, *pruned], settings, results_folder(arguments) / "gpu_speed.json", dense)
    print(f"speed: {output}", flush=True)
    for row in json.loads(output.read_text())["devices"][device.type]["speedups"]:
        print(json.dumps(row), flush=True)


def scale_phase(arguments: argparse.Namespace, device: torch.device) -> None:
    from pruning.assemble import write_pruned_checkpoint
    from pruning.blocks.store import BlockStore
    from pruning.engine import PruneEngine
    from pruning.io import write_json
    from pruning.machine import Machine
    from pruning.methods.registry import method_config
    from pruning.models.access import StreamedModel
    from pruning.models.checkpoint import CheckpointReader

    work = arguments.work / "scale"
    shutil.rmtree(work, ignore_errors=True)
    model_dir, output = work / "model", work / "pruned"
    result_path = results_folder(arguments) / "gpu_scale.json"
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "shapes": arguments.shapes,
        "blocks": arguments.blocks, "calibration": f"{arguments.samples}x{arguments.seqlen} random tokens",
        "method": "sparsegpt 50% unstructured", "forward_dtype": "bfloat16", "precision": precision(),
        "persist_activations": False, "complete": False}
    result["write_model_seconds"] = write_model(model_dir, arguments.blocks, device, arguments.shapes)
    result["checkpoint_bytes"] = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))

    started = time.perf_counter()
    model = StreamedModel(model_dir)
    options = engine_options(device)
    machine = Machine.resolve(options.device, options.forward_dtype)
    engine = PruneEngine(model, method_config({"method": "sparsegpt", "sparsity": 0.5}), options, machine,
                         random_calibration(arguments.samples, arguments.seqlen, arguments.shapes["vocabulary"]),
                         BlockStore(work / "blocks" / "run"))
    result.update(engine_setup_seconds=time.perf_counter() - started, machine=machine.model_dump(mode="json"),
                  activations_in_memory=engine.report.activations_in_memory,
                  activation_device=str(engine.memory.device), block_seconds=[])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index in range(arguments.blocks):
        block_started = time.perf_counter()
        engine.prune_block(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["block_seconds"].append(time.perf_counter() - block_started)
        if index == 0:  # block 0 includes the embeddings-only pass that captures every block's inputs
            result["block0_capture_seconds"] = engine.report.capture_seconds
            result["block0_prune_seconds"] = result["block_seconds"][0] - engine.report.capture_seconds
        seconds = sorted(result["block_seconds"])
        result.update(blocks_done=index + 1, median_block_seconds=seconds[len(seconds) // 2],
                      prune_seconds=time.perf_counter() - started, gpu_memory=gpu_memory(device),
                      peak_host_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      engine=engine.report.model_dump(mode="json", exclude={"layers"}))
        write_json(result_path, result)
        reserved = result["gpu_memory"].get("peak_reserved_gb", 0.0)
        print(f"block {index}: {result['block_seconds'][-1]:.1f} s, {reserved:.1f} GiB reserved", flush=True)
    output.mkdir()
    assemble_started = time.perf_counter()
    write_pruned_checkpoint(model, engine.store, output, structured=False)
    engine.close()
    result.update(assemble_seconds=time.perf_counter() - assemble_started, complete=True,
                  pruned_checkpoint_complete=set(CheckpointReader(output).names)
                  == set(CheckpointReader(model_dir).names))
    write_json(result_path, result)
    print(json.dumps({key: value for key, value in result.items() if key not in ("block_seconds", "engine")}, indent=2))


PHASES = {"speed": speed_phase, "scale": scale_phase}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="speed,scale", help="comma-separated, in order: speed, scale")
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--speed-blocks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-scale"))
    parser.add_argument("--dry-run", action="store_true",
                        help="check the script here: tiny shapes on the CPU, 2 blocks, 8x64 calibration")
    arguments = parser.parse_args()
    arguments.shapes = DRY_RUN_SHAPES if arguments.dry_run else SHAPES
    if arguments.dry_run:
        arguments.blocks, arguments.speed_blocks, arguments.samples, arguments.seqlen = 2, 2, 8, 64
    phases = [phase.strip() for phase in arguments.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if not torch.cuda.is_available() and not arguments.dry_run:
        print("no CUDA device: nothing measured, nothing written (--dry-run checks the script on the CPU)")
        return
    for phase in phases:
        PHASES[phase](arguments, torch.device("cpu" if arguments.dry_run else "cuda"))


if __name__ == "__main__":
    main()
