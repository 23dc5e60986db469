"""Flow `compress`: one model x one method config, the steps of `pruning.job.run_job` each run as its Prefect task:

  fetch -> calibrate -> tokenize evaluation text -> prune blocks -> assemble -> evaluate (perplexity, zero-shot;
  dense and pruned) -> export

The artifact store is the cache: every step's artifact sits under a key of what determines it (the `pruning`
source digest included), so a second identical run computes nothing, a killed run resumes at the first unfinished
block, and `pruneflow prune` (the same steps, called directly) shares all of it.
"""

# No `from __future__ import annotations` here: Prefect validates flow parameters from the annotations, and in a
# Dask worker (the flow pickled by value) string annotations cannot be resolved.
import time
from pathlib import Path

import torch
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, ConfigDict

from flows.console import CombinationRow, combination_row
from flows.interrupts import cancel_stopped_flow_run
from pruning.config import PruneJob
from pruning.evaluation.accuracy import AccuracyResult
from pruning.evaluation.perplexity import PerplexityResult
from pruning.evaluation.zero_shot import ZeroShotResult
from pruning.job import run_job
from pruning.record import RUN_RECORD_FILE, PruneRecord
from tasks.steps import PrefectRunner


class CombinationResult(BaseModel):
    """What a finished combination hands to the sweep: where its record is, its evaluation, and what this run did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    method: str
    pattern: str
    target_sparsity: float
    output_dir: Path
    perplexity: list[PerplexityResult]
    dense_perplexity: list[PerplexityResult]
    zero_shot: ZeroShotResult | None
    dense_zero_shot: ZeroShotResult | None
    accuracy: list[AccuracyResult] = []
    dense_accuracy: list[AccuracyResult] = []
    blocks_computed: int
    blocks_reused: int
    step_seconds: dict[str, float]
    started_at: float
    finished_at: float
    peak_rss_mb: float
    threads: int

    @classmethod
    def of(cls, record: PruneRecord, started_at: float) -> "CombinationResult":
        return cls(model=record.config.model, method=record.method, pattern=record.pattern,
                   target_sparsity=record.target_sparsity, output_dir=record.config.output_dir,
                   perplexity=record.perplexity, dense_perplexity=record.dense_perplexity,
                   zero_shot=record.zero_shot, dense_zero_shot=record.dense_zero_shot,
                   accuracy=record.accuracy, dense_accuracy=record.dense_accuracy,
                   blocks_computed=record.engine.blocks_computed, blocks_reused=record.engine.blocks_reused,
                   step_seconds=record.run.step_seconds, started_at=started_at, finished_at=time.time(),
                   peak_rss_mb=record.run.peak_rss_mb, threads=torch.get_num_threads())

    @property
    def record_path(self) -> Path:
        return self.output_dir / RUN_RECORD_FILE

    def record(self) -> PruneRecord:
        return PruneRecord.read(self.output_dir)


class FlowProgress:
    """A job's progress on its console row and, per block, as a Prefect progress artifact of the flow run."""

    def __init__(self, row: CombinationRow) -> None:
        self.row = row
        self.total = 0
        self.artifact: object = None

    def stage(self, name: str) -> None:
        self.row.stage(name)

    def blocks(self, total: int) -> None:
        self.row.blocks(total)
        self.total = total
        self.artifact = create_progress_artifact(0.0, description=f"decoder blocks pruned, of {total}")

    def block_done(self, index: int) -> None:
        self.row.block_done(index)
        update_progress_artifact(self.artifact, 100.0 * (index + 1) / self.total)  # type: ignore[arg-type]


@flow(name="compress", on_crashed=[cancel_stopped_flow_run])
def compress(job: PruneJob) -> CombinationResult:
    """Prune one model with one method config, evaluate it, and export it to `job.output_dir`."""
    started = time.time()
    with combination_row(str(job.output_dir), model_label(job.model), combination_label(job)) as row:
        record = run_job(job, PrefectRunner(), FlowProgress(row))
        row.done(record.headline())
    return CombinationResult.of(record, started)


def model_label(source: str) -> str:
    return Path(source).name or source


def combination_label(job: PruneJob) -> str:
    return f"{job.method.method} {job.method.pattern} {job.method.target_sparsity:g}"
