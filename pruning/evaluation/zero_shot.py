"""Zero-shot accuracy through lm-eval's HFLM wrapper, on the model object in memory (no re-save).

Two task sources under the standard task names (piqa, arc_easy, ..., hellaswag):
  - with `data_dir`: the YAMLs shipped in `pruning/evaluation/lm_eval_tasks/`, which keep lm-eval's prompts and
    scoring but read local files laid out as `local_data.TASK_FILES` says (e.g. ../shared/data);
  - without it: lm-eval's own task registry, whose datasets come from the Hugging Face hub.
Every result carries the lm-eval version, the limit and the batch size it was measured with.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, computed_field

from pruning.errors import ConfigError
from pruning.evaluation.lm_eval_tasks.local_data import TASK_FILES

TASKS_DIRECTORY = Path(__file__).resolve().parent / "lm_eval_tasks"
LOCAL_TASKS = tuple(TASK_FILES)
# Accuracy of a uniform guess (lambada_openai is open-vocabulary: 0).
CHANCE_ACCURACY = {"piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "boolq": 0.5, "rte": 0.5,
                   "openbookqa": 0.25, "lambada_openai": 0.0, "winogrande": 0.5, "hellaswag": 0.25}
REPORTED_METRICS = ("acc", "acc_norm", "perplexity")


def lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


def check_local_tasks(tasks: tuple[str, ...], data_dir: Path) -> None:
    """Every task has a shipped YAML and its files exist under `data_dir`; else a ValueError naming the field."""
    unknown = [task for task in tasks if task not in TASK_FILES]
    if unknown:
        raise ConfigError(f"zero_shot.tasks: no local YAML for {', '.join(map(repr, unknown))}; local tasks are "
                         f"{', '.join(LOCAL_TASKS)} (or leave zero_shot.data_dir unset to use lm-eval's hub tasks)")
    if not data_dir.is_dir():
        raise ConfigError(f"zero_shot.data_dir: '{data_dir}' is not a directory; give the folder that holds "
                         "piqa/, arc/, boolq/, ... (laid out like ../shared/data), or set zero_shot to null to skip")
    missing = [f"{relative} (for {task})" for task in tasks for relative in TASK_FILES[task]
               if not (data_dir / relative).is_file()]
    if missing:
        raise ConfigError(f"zero_shot.data_dir: '{data_dir}' lacks {', '.join(missing)}; "
                         "see pruning/evaluation/lm_eval_tasks/local_data.py for each task's file and format")


def check_hub_tasks(tasks: tuple[str, ...]) -> None:
    """Hub tasks need the hub: with HF_HUB_OFFLINE set they would fail after the model is pruned."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise ConfigError(f"zero_shot.data_dir: tasks {', '.join(tasks)} would be read from the Hugging Face hub, "
                         "which is offline (HF_HUB_OFFLINE=1); set data_dir to a local copy of the datasets")


def check_zero_shot_tasks(tasks: tuple[str, ...], data_dir: Path | None) -> None:
    """Local tasks need their files under `data_dir`; without it the tasks come from the hub, which must be online."""
    if data_dir is not None:
        check_local_tasks(tasks, data_dir)
    else:
        check_hub_tasks(tasks)


class ZeroShotSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lm_eval_version: str
    limit: int | None
    batch_size: int
    num_fewshot: int
    source: str  # the local data folder, or "hub"


class ZeroShotResult(BaseModel):
    """Per-task metrics (acc, acc_norm, perplexity where the task has them, and the documents scored) and the
    settings they were measured with."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # `average_accuracy` is written, and derived again

    tasks: dict[str, dict[str, float]]
    settings: ZeroShotSettings

    @computed_field  # type: ignore[prop-decorator]
    @property
    def average_accuracy(self) -> float:
        """Mean of each task's `acc` (the unweighted task average that pruning papers report)."""
        return sum(metrics["acc"] for metrics in self.tasks.values()) / len(self.tasks)


def zero_shot(model: torch.nn.Module, tokenizer: Any, tasks: tuple[str, ...], data_dir: Path | None,
              limit: int | None, batch_size: int, device: torch.device) -> ZeroShotResult:
    """Run lm-eval's zero-shot scoring of `tasks` on `model`; `limit` = first N documents of each task."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if data_dir is not None:
        check_local_tasks(tasks, data_dir)
        manager = TaskManager(include_path=str(TASKS_DIRECTORY), include_defaults=False,
                              metadata={"data_dir": str(data_dir.resolve())})
    else:
        manager = TaskManager()
    original_device = next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    try:
        wrapper = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = simple_evaluate(model=wrapper, tasks=list(tasks), task_manager=manager, num_fewshot=0, limit=limit,
                                 log_samples=False, bootstrap_iters=0)
    finally:
        model.to(original_device).train(was_training)
    if output is None:
        raise RuntimeError("lm-eval returned no results")
    results = {task: {metric: float(output["results"][task][f"{metric},none"]) for metric in REPORTED_METRICS
                      if f"{metric},none" in output["results"][task]}
               | {"documents": int(output["n-samples"][task]["effective"])}
               for task in tasks}
    settings = ZeroShotSettings(lm_eval_version=lm_eval_version(), limit=limit, batch_size=batch_size, num_fewshot=0,
                                source=str(data_dir) if data_dir is not None else "hub")
    return ZeroShotResult(tasks=results, settings=settings)


def zero_shot_fingerprint(tasks: tuple[str, ...], data_dir: Path | None) -> str:
    """sha256 over the lm-eval version and the bytes of every local file the tasks read (a cache key part)."""
    from pruning.io import sha256_file

    digest = hashlib.sha256(lm_eval_version().encode())
    for task in tasks:
        digest.update(task.encode())
        if data_dir is not None:
            for relative in TASK_FILES.get(task, ()):
                digest.update(f"{relative}:{sha256_file(data_dir / relative)}".encode())
    return digest.hexdigest()
