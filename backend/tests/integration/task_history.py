"""Concurrency read from Prefect's task-run history, for tests of the LTS tag limits."""

from __future__ import annotations

from datetime import datetime

from archiver.local_services import poll_until


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def tagged_task_runs_since(tag: str, name_like: str, since: datetime, timeout_s: float = 60) -> list:
    """Finished task runs whose name contains `name_like`, started after `since`, carrying `tag`.

    Prefect records task runs from their events, so under load a run that has ended may still show no end
    time for a while after its flow run finished: this waits until every run found has one."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    return _ended_task_runs(
        tag,
        lambda client: TaskRunFilter(
            name=TaskRunFilterName(like_=name_like), start_time=TaskRunFilterStartTime(after_=since)
        ),
        timeout_s,
    )


def tagged_task_runs_below(tag: str, flow_run_id, timeout_s: float = 60) -> list:
    """Finished task runs carrying `tag` of the flow run and of its subflow runs (a job's dataset runs); waits
    as `tagged_task_runs_since` does."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    def below(client):
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        return TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id, *(r.id for r in children)]))

    return _ended_task_runs(tag, below, timeout_s)


def _ended_task_runs(tag: str, task_run_filter, timeout_s: float) -> list:
    from prefect.client.orchestration import get_client

    def ended_runs():
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=task_run_filter(client))
        tagged = [r for r in runs if tag in r.tags]
        return (tagged,) if all(r.end_time for r in tagged) else None  # a tuple: an empty list is an answer too

    return poll_until(ended_runs, timeout=timeout_s, what=f"the {tag} task runs to be recorded as ended")[0]


def asked_at(task_run) -> datetime:
    """When the task run was submitted: its first state (Pending), timed by the client. Not `created`, the
    server's insert time, which under load can come after the task ended (runs are recorded from events)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return min(state.timestamp for state in client.read_task_run_states(task_run.id))
