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
    deletes the landing zone may follow. A job run found Crashed first waits for its recovery's verdict
    (`_crash_verdict`): a live run taken for dead during an outage is set Running again and goes on.

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
            # Only job runs have heartbeats (and a recovery): a subflow run is marked Crashed by the recovery
            # once it has found its job run dead.
            if state and state.is_crashed() and flow_run.parent_task_run_id is None:
                state = _crash_verdict(client, flow_run, max_wait_s)
            if state and not state.is_running():
                raise RunNotOwned(
                    f"flow run {flow_run.name} is {state.name} in Prefect, no longer running; "
                    "stopping without further changes (its job is another run's now)"
                )
            parent_task = flow_run.parent_task_run_id
            flow_run_id = (
                call_prefect(
                    partial(client.read_task_run, parent_task), "check for cancellation", max_wait_s
                ).flow_run_id
                if parent_task
                else None
            )


CRASH_VERDICT_POLL_S = 5.0
# A recovery is normally asked for within a second or two of the crash (the job_recovery trigger). Past this, the
# run asks for its own: the trigger missed the Crashed event (Prefect's in-memory broker drops events published
# before its triggers service subscribes, as when the zombie automation fires at a restarted server's start).
RECOVERY_ASK_AFTER_S = 30.0


def _crash_verdict(client, flow_run, max_wait_s: float):
    """The state of a job run marked Crashed while this process still runs it, once the recovery has decided.

    The zombie automation marks a run Crashed when its heartbeats stay away, which also happens to a live
    run while the Prefect server or its database is down. Its recovery (`flows/recovery.py`) then gives it a
    heartbeat interval to show it lives, and sets it Running again if it does; otherwise the job goes on in
    another run. So a run that finds itself Crashed waits for that verdict (sending heartbeats meanwhile):
    Running again, or still Crashed once a recovery asked for after the crash has ended, or `max_wait_s`.
    No recovery asked for RECOVERY_ASK_AFTER_S after the crash: the run asks for one itself."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterName

    crashed = flow_run.state
    recoveries = FlowRunFilter(
        name=FlowRunFilterName(like_=f"recover-%{flow_run.id}"),
        expected_start_time=FlowRunFilterExpectedStartTime(after_=crashed.timestamp),
    )
    read_state = partial(client.read_flow_run, flow_run.id)
    deadline = time.monotonic() + max_wait_s
    while True:
        state = call_prefect(read_state, "check the crash verdict", max_wait_s).state
        if state is None or not state.is_crashed() or time.monotonic() > deadline:
            return state
        asked = call_prefect(
            partial(client.read_flow_runs, flow_run_filter=recoveries), "check the crash verdict", max_wait_s
        )
        if any(run.state and run.state.is_final() for run in asked):
            # Read once more: the recovery may have set it Running just before it ended.
            return call_prefect(read_state, "check the crash verdict", max_wait_s).state
        if not asked and time.time() - crashed.timestamp.timestamp() > RECOVERY_ASK_AFTER_S:
            call_prefect(partial(_ask_for_recovery, flow_run, crashed), "ask for a recovery", max_wait_s)
        time.sleep(CRASH_VERDICT_POLL_S)


def _ask_for_recovery(flow_run, crashed) -> None:
    """Start the job_recovery deployment for this run, as its trigger does on the Crashed event."""
    from prefect.deployments import run_deployment
    from prefect.logging import get_run_logger

    from archiver.config.deployments import RECOVERY

    recovery = run_deployment(
        RECOVERY.full_name,
        parameters={"flow_run_id": f"prefect.flow-run.{flow_run.id}"},
        idempotency_key=f"{flow_run.id}-{crashed.id}-recovery",
        timeout=0,
        as_subflow=False,
    )
    get_run_logger().warning(
        "flow run %s was marked Crashed (%s) and no recovery followed within %.0f s: started %s to judge it",
        flow_run.name,
        crashed.message,
        RECOVERY_ASK_AFTER_S,
        recovery.name,  # type: ignore[union-attr]  # typed sync-or-async; sync here
    )


class OwnershipCheck:
    """`raise_if_cancelled` at most every `interval_s` (before each datablock: a woken run stops writing soon,
    without an API round trip per datablock). Once it has found the run cancelled or no longer owned, every
    later call raises too: the datablocks of a dataset are written in parallel, and each must stop. Shared
    by those threads (thread-safe)."""

    def __init__(self, interval_s: float = 10.0):
        self._interval_s = interval_s
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._verdict: RunCancelled | RunNotOwned | None = None

    def __call__(self) -> None:
        # One check at a time: a caller arriving while one is under way (say, waiting for a crash verdict)
        # waits for its answer instead of writing meanwhile.
        with self._lock:
            if self._verdict is not None:
                raise type(self._verdict)(*self._verdict.args)
            if time.monotonic() - self._last < self._interval_s:
                return
            try:
                raise_if_cancelled()
            except (RunCancelled, RunNotOwned) as verdict:
                self._verdict = verdict
                raise
            finally:
                self._last = time.monotonic()
