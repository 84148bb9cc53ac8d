"""Figures a run records on itself as flow-run labels, so the metrics exporter can count them from Prefect's
history (results are not persisted; labels are part of every flow run the API returns).

Labels are `archiver.<name>` with a number: a dataset subflow run records `archiver.bytes` (the bytes of the
dataset's files it archived or retrieved), the audit run its `archiver.audit.*` summary.
"""

from __future__ import annotations

import threading
import time

LABEL_PREFIX = "archiver."
BYTES = LABEL_PREFIX + "bytes"
DATABLOCKS = LABEL_PREFIX + "datablocks"
AUDIT_CHECKED = LABEL_PREFIX + "audit.checked"
AUDIT_BYTES = LABEL_PREFIX + "audit.bytes"
AUDIT_PROBLEMS = LABEL_PREFIX + "audit.problems"
# A retrieval's dataset run, while it waits for the LTS to bring its datablocks back (flows/restores.py): how many
# are not readable yet, and for how many a restore was under way.
RESTORES_WAITING = LABEL_PREFIX + "restores.waiting"
RESTORES_ASKED = LABEL_PREFIX + "restores.asked"


_sending: list[threading.Thread] = []


def record_figures(figures: dict[str, int], wait: bool = False) -> None:
    """Add `figures` (label -> number) to the labels of the current flow run, in the background: the label
    write is a slow Prefect API call (docs/datapath.md, "Job overhead") that the job need not wait for.
    `wait_for_figures` at the end of the job run waits for them. With `wait`, written before this returns (so
    that successive values of one figure arrive in order). For metrics: a failure is logged, never raised
    (the data is safe either way; the exporter then undercounts this run)."""
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    client, flow_run_id, log = context.client, context.flow_run.id, get_run_logger()
    labels: dict[str, bool | int | float | str] = dict(figures)

    def send() -> None:
        try:
            client.update_flow_run_labels(flow_run_id, labels)
        except Exception as e:
            log.warning("figures %s not recorded on the flow run (Prefect API: %s); metrics miss them", figures, e)

    if wait:
        send()
        return
    sender = threading.Thread(target=send, name="record-figures", daemon=True)
    sender.start()
    _sending.append(sender)


def wait_for_figures(timeout_s: float = 30) -> None:
    """Wait until the figures recorded in this process are written (or `timeout_s` has passed)."""
    deadline = time.monotonic() + timeout_s
    while _sending:
        _sending.pop().join(max(0.0, deadline - time.monotonic()))


def figure(labels: dict | None, name: str) -> int:
    """A recorded figure of a flow run's labels; 0 when the run recorded none."""
    value = (labels or {}).get(name)
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
