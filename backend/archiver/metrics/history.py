"""Finished flow runs of the archiver's flows, read from Prefect's history.

Every counter the exporter serves is a sum over these records, so a restarted exporter
counts the same totals again from Prefect (nothing is kept in the exporter alone).
A finished run is read once and kept; later refreshes ask only for runs that ended since
(with an overlap, for end times written late). A run re-run by hand (Retry in the UI) ends
again with a new end time and is read again; its earlier outcomes come from its state
history, so a failure stays counted after the retry succeeded. A run that goes from one
final state to another (a woken run or an operator setting a Crashed run Failed) keeps its
first end time in Prefect, so a run is also read again when its latest state changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from uuid import UUID

FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
OVERLAP = timedelta(minutes=10)
PAGE = 200


@dataclass(frozen=True)
class FinishedRun:
    id: UUID
    flow: str
    outcomes: tuple[str, ...]  # every final state the run reached, lower case ("completed", "failed", ...)
    end: datetime
    state_at: datetime  # when its latest state was set
    run_seconds: float  # time spent Running, over all its attempts
    queue_wait_seconds: float | None  # from the scheduled start to the first start; None when it never started
    labels: dict

    @property
    def outcome(self) -> str:
        return self.outcomes[-1]


def _outcomes(client, flow_run) -> tuple[str, ...]:
    latest = flow_run.state.type.value.lower()
    if (flow_run.run_count or 0) <= 1 and not _left_a_final_state(flow_run):
        return (latest,)
    states = client.read_flow_run_states(flow_run.id)
    finals = tuple(s.type.value.lower() for s in states if s.type.value in FINAL_STATES)
    return finals or (latest,)


def _left_a_final_state(flow_run) -> bool:
    """Whether the run reached a final state before its latest: Prefect sets the end time at the first."""
    return flow_run.end_time is not None and flow_run.state.timestamp > flow_run.end_time


def _record(client, flow_run, flow_name: str) -> FinishedRun:
    wait = None
    if flow_run.start_time and flow_run.expected_start_time:
        wait = max(0.0, (flow_run.start_time - flow_run.expected_start_time).total_seconds())
    return FinishedRun(
        id=flow_run.id,
        flow=flow_name,
        outcomes=_outcomes(client, flow_run),
        end=flow_run.end_time or flow_run.state.timestamp,
        state_at=flow_run.state.timestamp,
        run_seconds=flow_run.total_run_time.total_seconds() if flow_run.total_run_time else 0.0,
        queue_wait_seconds=wait,
        labels=dict(flow_run.labels or {}),
    )


def _keeping_outcomes(known: FinishedRun, now: FinishedRun) -> FinishedRun:
    """`now`, still counting the outcomes `known` was counted with: a run whose final state was changed
    by hand (forced, without a new attempt) must not take back what a counter already showed."""
    if now.outcomes[: len(known.outcomes)] == known.outcomes:
        return now
    return replace(now, outcomes=known.outcomes + now.outcomes[-1:])


class RunHistory:
    """The finished runs of `flows` (flow names), refreshed incrementally from a sync Prefect client."""

    def __init__(self, flows: list[str]):
        self.flows = list(flows)
        self._runs: dict[UUID, FinishedRun] = {}
        self._flow_names: dict[UUID, str] = {}
        self._floor: datetime | None = None  # runs that ended before it are not read (they are folded)

    def runs(self) -> list[FinishedRun]:
        return list(self._runs.values())

    def runs_before(self, end: datetime) -> list[FinishedRun]:
        return [run for run in self._runs.values() if run.end < end]

    def forget_before(self, end: datetime) -> None:
        """Drop the runs that ended before `end` and never read such runs again."""
        self._runs = {key: run for key, run in self._runs.items() if run.end >= end}
        self._floor = end

    def start_at(self, floor: datetime | None) -> None:
        """Forget every run; read the runs that ended from `floor` on (None: all) at the next refresh."""
        self._runs = {}
        self._floor = floor

    def refresh(self, client) -> None:
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterEndTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.sorting import FlowRunSort

        newest = max((run.end for run in self._runs.values()), default=None)
        run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(FINAL_STATES))))
        after = max((t for t in (newest - OVERLAP if newest else None, self._floor) if t is not None), default=None)
        if after is not None:
            run_filter.end_time = FlowRunFilterEndTime(after_=after)
        offset = 0
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=self.flows)),
                flow_run_filter=run_filter,
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=PAGE,
                offset=offset,
            )
            for flow_run in page:
                known = self._runs.get(flow_run.id)
                if known is None or known.state_at != flow_run.state.timestamp:
                    record = _record(client, flow_run, self.flow_name(client, flow_run.flow_id))
                    self._runs[flow_run.id] = record if known is None else _keeping_outcomes(known, record)
            if len(page) < PAGE:
                return
            offset += PAGE

    def flow_name(self, client, flow_id: UUID) -> str:
        if flow_id not in self._flow_names:
            self._flow_names[flow_id] = client.read_flow(flow_id).name
        return self._flow_names[flow_id]
