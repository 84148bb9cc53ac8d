"""Where the seconds of a job go, read back from Prefect's history of its run.

From the SciCat job's creation to the end of the flow run: the hand-over to Prefect (SciCat's job action and
the archiver API), the wait for a worker or runner to pick the run up (polling), the start of the flow's
process or container, then inside the run the wall-clock time covered by SciCat calls, by data tasks, and
the rest (Prefect's engine, subflows, artifacts). Used by the benchmarks of the local runner and the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

SCICAT_TASK_PREFIX = "scicat:"  # task_run_name of flows.scicat_tasks.scicat_call


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float


def covered_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """Seconds covered by the union of the intervals (tasks running at once count once)."""
    total, end_so_far = 0.0, None
    for start, end in sorted(intervals):
        if end_so_far is None or start > end_so_far:
            total += (end - start).total_seconds()
            end_so_far = end
        elif end > end_so_far:
            total += (end - end_so_far).total_seconds()
            end_so_far = end
    return total


def _state_times(client, flow_run_id: UUID) -> dict[str, datetime]:
    """The first time the run entered each state type (SCHEDULED, PENDING, RUNNING, ...)."""
    times: dict[str, datetime] = {}
    for state in sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp):
        times.setdefault(state.type.value, state.timestamp)
    return times


def _run_tree(client, flow_run_id: UUID) -> tuple[list[UUID], set[UUID]]:
    """The run and its subflow runs; and the task runs that stand for those subflows in their parents."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    ids, frontier, wrappers = [flow_run_id], [flow_run_id], set()
    while frontier:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
        )
        frontier = [run.id for run in children]
        wrappers |= {run.parent_task_run_id for run in children if run.parent_task_run_id}
        ids += frontier
    return ids, wrappers


def _task_runs(client, flow_run_id: UUID) -> list:
    """The task runs of the run and its subflows, without the task runs standing for subflows."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids, wrappers = _run_tree(client, flow_run_id)
    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200)
    return [run for run in runs if run.id not in wrappers]


def _task_intervals(task_runs: list) -> dict[str, list[tuple[datetime, datetime]]]:
    intervals: dict[str, list[tuple[datetime, datetime]]] = {"scicat": [], "data": []}
    for run in task_runs:
        if run.start_time and run.end_time:
            kind = "scicat" if run.name.startswith(SCICAT_TASK_PREFIX) else "data"
            intervals[kind].append((run.start_time, run.end_time))
    return intervals


def job_phases(flow_run_id: UUID, job_created_at: datetime) -> list[Phase]:
    """The phases of a finished job run, in order; their seconds add up to the job's wall time."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = _state_times(client, flow_run_id)
        intervals = _task_intervals(_task_runs(client, flow_run_id))
    scheduled, pending, running = states["SCHEDULED"], states["PENDING"], states["RUNNING"]
    ended = max(time for kind, time in states.items() if kind in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
    data = covered_seconds(intervals["data"])
    both = covered_seconds(intervals["scicat"] + intervals["data"])
    return [
        Phase("SciCat job -> run scheduled (job action, archiver API)", (scheduled - job_created_at).total_seconds()),
        Phase("scheduled -> picked up (worker/runner polling)", (pending - scheduled).total_seconds()),
        Phase("picked up -> flow running (process/container start)", (running - pending).total_seconds()),
        Phase("data tasks (S3, LTS)", data),
        Phase("SciCat calls (tasks), outside data tasks", both - data),
        Phase(
            "rest of the run (engine, subflow runs, settings, logins, artifacts)",
            (ended - running).total_seconds() - both,
        ),
    ]


def slowest_tasks(flow_run_id: UUID, count: int = 5) -> list[Phase]:
    """The run's longest task runs (its subflows' included), longest first."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = _task_runs(client, flow_run_id)
    timed = [Phase(r.name, (r.end_time - r.start_time).total_seconds()) for r in runs if r.start_time and r.end_time]
    return sorted(timed, key=lambda p: -p.seconds)[:count]


def format_phases(title: str, phases: list[Phase]) -> list[str]:
    total = sum(p.seconds for p in phases)
    width = max(len(p.name) for p in phases)
    lines = [title] + [f"  {p.name:<{width}}  {p.seconds:6.2f} s" for p in phases]
    return lines + [f"  {'total: SciCat job created -> run ended':<{width}}  {total:6.2f} s"]


def first_lts_write_wait(flow_run_id: UUID) -> float | None:
    """Seconds the run's first LTS write slice waited for its tag slot: from its submission (first state, timed by
    the client) to its start; None when the run wrote nothing."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        writes = [r for r in _task_runs(client, flow_run_id) if r.name.startswith("write ") and r.start_time]
        if not writes:
            return None
        first = min(writes, key=lambda r: r.start_time)
        asked = min(state.timestamp for state in client.read_task_run_states(first.id))
    return (first.start_time - asked).total_seconds()
