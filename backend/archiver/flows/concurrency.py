"""Reconciling tag concurrency slots that dead task runs still hold.

A task run killed hard (its container or process gone) cannot release its
slot; Prefect keeps the lease until it expires, or for good when leases were
lost with a server restart. A slot is stale when its holder task run no longer
exists or it or its flow run is in a final state (a worker marks a flow run
Crashed when its container dies). Reconciling releases exactly those slots
and keeps the ones of live task runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True)
class Reconciled:
    tag: str
    released: int
    kept: int


def is_stale_holder(client, task_run_id: UUID) -> bool:
    """Whether a slot holder (task run id) is gone, finished, or of a finished flow run."""
    from prefect.exceptions import ObjectNotFound

    try:
        task_run = client.read_task_run(task_run_id)
    except ObjectNotFound:
        return True
    if task_run.state is None or task_run.state.is_final():
        return True
    if task_run.flow_run_id is None:
        return False
    try:
        flow_run = client.read_flow_run(task_run.flow_run_id)
    except ObjectNotFound:
        return True
    return flow_run.state is not None and flow_run.state.is_final()


def reconcile_tag(client, tag: str, recheck_after_s: float = 1.0) -> Reconciled:
    """Release the stale slots of one tag limit; `client` is a sync Prefect client."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        holders = client.read_concurrency_limit_by_tag(tag).active_slots
    except ObjectNotFound:
        return Reconciled(tag, 0, 0)
    live = [holder for holder in holders if not is_stale_holder(client, holder)]
    if len(live) < len(holders):
        client.reset_concurrency_limit_by_tag(tag, slot_override=live)
    # Slots counted without a lease behind them (lost leases, or the reset above,
    # which re-creates leases without clearing the count) are leaked: count them anew.
    # A slot is counted a moment before its lease is written: only a surplus seen twice is a leak.
    name = f"tag:{tag}"
    surplus = 0
    for attempt in range(2):
        if attempt:
            time.sleep(recheck_after_s)
        counted = client.read_global_concurrency_limit_by_name(name).active_slots
        leased = len(client.read_concurrency_limit_by_tag(tag).active_slots)
        if counted <= leased:
            break
    else:
        surplus = counted - leased
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=leased))
    return Reconciled(tag, released=max(surplus, len(holders) - len(live)), kept=leased)


def reconcile_tags(tags: Iterable[str]) -> list[Reconciled]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [reconcile_tag(client, tag) for tag in tags]
