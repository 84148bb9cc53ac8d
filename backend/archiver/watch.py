"""Following a job's flow run from a terminal: a progress bar per dataset (bytes, rate, time left), a
line per finished step, and the job's summary table at the end.

What it shows comes from Prefect: the run's and its subflows' states, their progress artifacts
(whose descriptions carry the total, `flows.progress.described_with_total`) and the job run's
summary table artifact. On a terminal the bars update in place; otherwise (a log, a pipe) each
step is one line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import cast
from uuid import UUID

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table

from archiver.flows.progress import what_and_total


@dataclass
class _Seen:
    states: dict[UUID, str] = field(default_factory=dict)  # flow run -> last state name shown
    bars: dict[UUID, TaskID] = field(default_factory=dict)  # progress artifact -> rich task id
    steps: dict[UUID, int] = field(default_factory=dict)  # progress artifact -> last quarter printed


def follow_run(flow_run_id: UUID, ui_url: str, console: Console | None = None, poll_s: float = 1.0) -> bool:
    """Show the run until it ends; True when it completed."""
    from prefect.client.orchestration import get_client

    console = console or _console()
    seen = _Seen()
    progress = Progress(
        TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=30),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        expand=True,
    )
    with get_client(sync_client=True) as client, progress:
        while True:
            run = client.read_flow_run(flow_run_id)
            children = _subflows(client, run.id)
            for each in (run, *children):
                _show_state(console, seen, each)
            for artifact in _progress_artifacts(client, [run.id, *(c.id for c in children)]):
                _show_progress(console, progress, seen, artifact)
            if run.state is not None and run.state.is_final():
                final = run.state
                break
            time.sleep(poll_s)
    _show_summary(console, run_summary(run.id))
    if not final.is_completed():
        console.print(
            f"[red]{escape(run.name)} {final.name}[/red]: {escape(final.message or '')}; "
            f"see {ui_url}/runs/flow-run/{run.id}"
        )
    return final.is_completed()


def _console() -> Console:
    """On a terminal its own width; in a log or pipe lines are never wrapped or cut."""
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=200)


def _subflows(client, flow_run_id: UUID) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    )


def _progress_artifacts(client, flow_run_ids: list[UUID]) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(
            type=ArtifactFilterType(any_=["progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids)
        )
    )


def _show_state(console: Console, seen: _Seen, run) -> None:
    name = run.state.name if run.state else "Scheduled"
    if seen.states.get(run.id) != name:
        seen.states[run.id] = name
        colour = "green" if name == "Completed" else "red" if run.state and run.state.is_final() else "cyan"
        console.print(f"{time.strftime('%H:%M:%S')} {escape(run.name)}: [{colour}]{name}[/{colour}]")


def _show_progress(console: Console, progress: Progress, seen: _Seen, artifact) -> None:
    what, total = what_and_total(artifact.description or "") or (artifact.description or "progress", 100)
    done = total * float(artifact.data) / 100
    if progress.disable:  # not a terminal: a line at each quarter
        quarter = int(float(artifact.data) // 25)
        if seen.steps.get(artifact.id) != quarter:
            seen.steps[artifact.id] = quarter
            console.print(f"{time.strftime('%H:%M:%S')} [{what}: {float(artifact.data):.0f}%]", markup=False)
        return
    if artifact.id not in seen.bars:
        seen.bars[artifact.id] = progress.add_task(escape(what), total=total)
    # "archiving <pid>: verifying": the phase changes while the total, the dataset's bytes, stays
    progress.update(seen.bars[artifact.id], completed=done, description=escape(what))


def run_summary(flow_run_id: UUID) -> tuple[str, list[dict]] | None:
    """The job run's summary table artifact (description, rows), if it made one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=["table"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    if not tables:
        return None
    data = tables[0].data
    rows: list[dict] = json.loads(data) if isinstance(data, str) else cast(list[dict], data)
    return tables[0].description or "", rows


def _show_summary(console: Console, summary: tuple[str, list[dict]] | None) -> None:
    if not summary or not summary[1]:
        return
    title, rows = summary
    table = Table(title=escape(title))
    for column in rows[0]:
        table.add_column(column, justify="right" if isinstance(rows[0][column], (int, float)) else "left")
    for row in rows:
        table.add_row(*(escape(str(value)) for value in row.values()))
    console.print(table)
