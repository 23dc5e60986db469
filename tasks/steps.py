"""Prefect tasks: one per step of a pruning job (`pruning.steps`: the design card's fetch / calibrate / per-block
Hessian + solve / reassemble / evaluate), plus the benchmark, each a thin wrapper that calls exactly its step.

Steps pass small typed records of paths and digests; Prefect's own result cache stays off (no pickles): the
artifact store is the cache. A step that found its artifact in the store ends in a `Cached` state with a message
saying so (a partly reused prune ends Completed with how many blocks it reused), so the Prefect UI tells a reused
step from a computed one. `PrefectRunner` is the `StepRunner` the flows give `pruning.job`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from pruning import speed, steps
from pruning.job import StepRunner

Output = TypeVar("Output")


def _step_task(step: Callable[..., Any], name: str) -> Task[Any, Any]:
    @functools.wraps(step)
    def call_step(*args: Any, **kwargs: Any) -> Any:
        output = step(*args, **kwargs)
        note = output.note if isinstance(output, steps.StepOutput) else None
        if note is None:
            return output
        return Completed(data=output, name="Cached" if output.reused else "Completed", message=note)

    return task(name=name, cache_policy=NO_CACHE, persist_result=False)(call_step)


STEP_TASKS: dict[Callable[..., Any], Task[Any, Any]] = {
    step: _step_task(step, name) for step, name in (
        (steps.fetch, "fetch"), (steps.calibrate, "calibrate"),
        (steps.prepare_evaluation_text, "tokenize evaluation text"),
        (steps.prepare_evaluation_images, "prepare evaluation images"), (steps.prune, "prune blocks"),
        (steps.assemble, "assemble"), (steps.evaluate, "evaluate"), (steps.evaluate_images, "evaluate images"),
        (steps.evaluate_zero_shot, "zero-shot"), (steps.export, "export"))}

# Timings are measurements of this machine now: never served from a cache; taken in a fresh process, as
# `pruneflow bench` takes them, not in the flow's own after a whole sweep.
benchmark_task = task(name="benchmark", cache_policy=NO_CACHE, persist_result=False)(speed.benchmark_in_fresh_process)


class PrefectRunner(StepRunner):
    """Runs each step as its Prefect task (inside the calling flow run) and hands back the step's output."""

    def call(self, step: Callable[..., Output], *args: Any, **kwargs: Any) -> Output:
        result = STEP_TASKS[step](*args, **kwargs)
        return result.result() if isinstance(result, State) else result  # type: ignore[no-any-return]
