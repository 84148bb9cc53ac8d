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


_sending: list[threading.Thread] = []


def record_figures(figures: dict[str, int]) -> None:
    """Add `figures` (label -> number) to the labels of the current flow run, in the background: the label
    write is a slow Prefect API call (docs/datapath.md, "Job overhead") that the job need not wait for.
    `wait_for_figures` at the end of the job run waits for them. For metrics: a failure is logged, never raised
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
