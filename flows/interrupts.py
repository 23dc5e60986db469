"""Stopping a run with Ctrl-C or SIGTERM: within seconds, nothing half-written, every record marked as stopped.

A Ctrl-C at a terminal signals the whole foreground process group. For `compress` and `sweep` that group would hold
Prefect's temporary API server and the Dask workers too: they die at once, and the run can no longer report its end
(Prefect's client retries the vanished server for over a minute, then prints a traceback). So the `pruneflow`
command runs those two in a child process with a session of its own and passes SIGINT and SIGTERM on to that child
alone (as SIGINT). In the child the signal raises `Stopped` in the main thread: the block store keeps every finished
block, atomic directories remove their staging folders, the MLflow runs end as KILLED, the Prefect flow runs as
Cancelled, and the command exits 130 (SIGINT) or 143 (SIGTERM). Rerunning the same command resumes from the block store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from pruning.io import die_with_parent

SUPERVISED_ENVIRONMENT = "PRUNEFLOW_SUPERVISED"  # set in the child, so that it runs the command itself
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The user stopped the run with a signal; exit status 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_received: list[int] = []  # the stop signals this process has received


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    raise Stopped(signum)


def raise_if_stopped() -> None:
    """Raise `Stopped` again if a stop signal came and was swallowed: Prefect drops a BaseException raised while a
    flow run tears down after its function returned (e.g. while it joins its heartbeat thread)."""
    if _received:
        raise Stopped(_received[-1])


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise `Stopped` in the main thread, so that `finally` blocks and context managers
    run. After: the handlers found before are back."""
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_stop_signals() -> None:
    """For the last seconds of a process whose work is done (Prefect's server and clients shutting down): a stop
    signal then has nothing left to stop."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def run_supervised(argv: Sequence[str]) -> int:
    """Run `pruneflow <argv>` in a child in its own session; forward SIGINT/SIGTERM to it; return its status."""
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], start_new_session=True,
                             env={**os.environ, SUPERVISED_ENVIRONMENT: "1"},
                             preexec_fn=die_with_parent)

    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        # Always as SIGINT: inside a flow run Prefect turns SIGTERM into its own TerminationSignal, which
        # bypasses `Stopped`; the exit status still tells which signal the user sent.
        received.append(signum)
        child.send_signal(signal.SIGINT)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    returncode = child.wait()
    if received and returncode in (Stopped(signal.SIGINT).exit_status, -signal.SIGINT):
        return Stopped(received[0]).exit_status
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: the shell's 128 + N


def needs_supervisor(argv: Sequence[str]) -> bool:
    """`compress` and `sweep` start Prefect's server (and maybe Dask workers): they run under a supervisor."""
    return bool(argv) and argv[0] in ("compress", "sweep") and not os.environ.get(SUPERVISED_ENVIRONMENT) \
        and not any(argument in ("-h", "--help") for argument in argv)


def cancel_stopped_flow_run(_flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_crashed` hook: a flow run that crashed because the user stopped it ends Cancelled instead."""
    if not _received:
        return
    from prefect import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelled(message=f"stopped by the user ({state.message})"),
                                  force=True)
