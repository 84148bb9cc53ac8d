"""What is true now, read at scrape time: unfinished runs and stuck ones, tag-limit slots, the LTS, the
retrieval bucket."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from archiver.storage.lts_store import LtsStore

UNFINISHED_STATES = ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED")
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


@dataclass(frozen=True)
class UnfinishedRun:
    flow: str
    state: str  # lower case: "running", "scheduled", ...
    last_heartbeat: datetime | None
    labels: dict  # with the figures the run recorded so far (flows/figures.py)


def unfinished_runs(client, flows: list[str], flow_name) -> list[UnfinishedRun]:
    """Runs of `flows` not in a final state; running ones with the time of their latest heartbeat event.
    `flow_name(client, flow_id)` names a run's flow."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=flows)),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(UNFINISHED_STATES)))
        ),
    )
    return [
        UnfinishedRun(
            flow_name(client, run.flow_id),
            run.state.type.value.lower(),
            latest_heartbeat(client, run.id) if run.state.is_running() else None,
            dict(run.labels or {}),
        )
        for run in runs
    ]


def latest_heartbeat(client, flow_run_id) -> datetime | None:
    from prefect.events.filters import EventFilter, EventNameFilter, EventOrder, EventResourceFilter

    page = client.read_events(
        EventFilter(
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            order=EventOrder.DESC,
        ),
        limit=1,
    )
    return page.events[0].occurred if page.events else None


def is_stuck(run: UnfinishedRun, window_s: float, now: datetime) -> bool:
    """Running, and its latest heartbeat is older than the zombie window. A run that never sent one is not
    judged: only runs started with heartbeats on (deployment runs of the job flows) send them."""
    return (
        run.state == "running"
        and run.last_heartbeat is not None
        and (now - run.last_heartbeat).total_seconds() > window_s
    )


@dataclass(frozen=True)
class TagSlots:
    tag: str
    limit: int
    held: int  # slots counted as taken (what makes tasks wait)
    dead: int  # of those, held by task runs that are gone or finished, or counted without any holder


def tag_slots(client, tag: str) -> TagSlots | None:
    from prefect.exceptions import ObjectNotFound

    from archiver.flows.concurrency import is_stale_holder

    try:
        limit = client.read_concurrency_limit_by_tag(tag)
        counted = client.read_global_concurrency_limit_by_name(f"tag:{tag}").active_slots
    except ObjectNotFound:
        return None
    holders = limit.active_slots
    stale = sum(1 for holder in holders if is_stale_holder(client, holder))
    return TagSlots(tag, limit.concurrency_limit, counted, stale + max(0, counted - len(holders)))


@dataclass(frozen=True)
class LtsSpace:
    size_bytes: int
    free_bytes: int


def lts_space(root: Path) -> LtsSpace:
    usage = shutil.disk_usage(root)
    return LtsSpace(usage.total, usage.free)


def datablocks_failing_audit(store: LtsStore) -> int:
    """Datablocks whose latest audit record (`<name>.audit.json` beside the manifest) says it failed."""
    from archiver.packing.audit import AUDIT_SUFFIX
    from archiver.packing.naming import DATASETS_PREFIX

    failing = 0
    for dataset in store.entries(DATASETS_PREFIX):
        if not dataset.is_folder:
            continue
        folder = f"{DATASETS_PREFIX}/{dataset.name}/datablocks"
        for name in store.datablock_names(folder):
            if not name.endswith(AUDIT_SUFFIX):
                continue
            try:
                failing += json.loads(store.read_text(f"{folder}/{name}")).get("ok") is False
            except (OSError, ValueError):
                failing += 1  # an unreadable record is no proof the datablock is fine
    return failing


@dataclass(frozen=True)
class BucketUsage:
    bytes: int
    objects: int


def bucket_usage(s3, bucket: str) -> BucketUsage:
    total = count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            total += item["Size"]
            count += 1
    return BucketUsage(total, count)


def utc_now() -> datetime:
    return datetime.now(UTC)
