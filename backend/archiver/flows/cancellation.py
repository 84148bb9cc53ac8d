"""Stopping before an irreversible step when the run is being cancelled or is no longer the job's owner."""

from __future__ import annotations

import threading
import time
from functools import partial

from archiver.clients.outage import call_prefect
from archiver.errors import ArchiverError


class RunCancelled(ArchiverError):
    """The run (or a run above it) is being cancelled: stop before any further irreversible step."""


class RunNotOwned(ArchiverError):
    """The run (or a run above it) is no longer running in Prefect's eyes: taken for crashed while frozen
    or cut off, its job may already be another run's. It stops without touching SciCat, the LTS or the
    landing zone again; the run that owns the job finishes it."""


def raise_if_cancelled(max_wait_s: float = 300) -> None:
    """Check this flow run and the runs above it before an irreversible step: a cancellation hook may
    already be cleaning up in another process (RunCancelled), or the run was marked crashed and its job
    handed to another run (RunNotOwned). Either way no step that registers data, reports to SciCat or
    deletes the landing zone may follow.

    While the Prefect API is unreachable the check is repeated for up to `max_wait_s`; if it stays
    down, PrefectUnavailable fails the dataset (its verified datablocks stay for a re-run): going on
    without knowing whether the run was cancelled could race a cleanup."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    with get_client(sync_client=True) as client:
        while flow_run_id is not None:
            flow_run = call_prefect(partial(client.read_flow_run, flow_run_id), "check for cancellation", max_wait_s)
            state = flow_run.state
            if state and (state.is_cancelling() or state.is_cancelled()):
                raise RunCancelled(f"flow run {flow_run.name} is {str(state.name).lower()}")
            if state and not state.is_running():
                raise RunNotOwned(f"flow run {flow_run.name} is {state.name} in Prefect, no longer running; "
                                  "stopping without further changes (its job is another run's now)")
            parent_task = flow_run.parent_task_run_id
            flow_run_id = call_prefect(partial(client.read_task_run, parent_task), "check for cancellation",
                                       max_wait_s).flow_run_id if parent_task else None


class OwnershipCheck:
    """`raise_if_cancelled` at most every `interval_s` (before each datablock: a woken run stops writing soon,
    without an API round trip per datablock)."""

    def __init__(self, interval_s: float = 10.0):
        self._interval_s = interval_s
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if time.monotonic() - self._last < self._interval_s:
                return
            self._last = time.monotonic()
        raise_if_cancelled()
