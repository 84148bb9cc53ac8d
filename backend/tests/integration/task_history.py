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
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    def ended_runs():
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(like_=name_like),
                    start_time=TaskRunFilterStartTime(after_=since),
                )
            )
        tagged = [r for r in runs if tag in r.tags]
        return (tagged,) if all(r.end_time for r in tagged) else None  # a tuple: an empty list is an answer too

    return poll_until(ended_runs, timeout=timeout_s, what=f"the {tag} task runs to be recorded as ended")[0]


def asked_at(task_run) -> datetime:
    """When the task run was submitted: its first state (Pending), timed by the client. Not `created`, the
    server's insert time, which under load can come after the task ended (runs are recorded from events)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return min(state.timestamp for state in client.read_task_run_states(task_run.id))
