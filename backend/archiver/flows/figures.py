"""Figures a run records on itself as flow-run labels, so the metrics exporter can count them from Prefect's
history (results are not persisted; labels are part of every flow run the API returns).

Labels are `archiver.<name>` with a number: a dataset subflow run records `archiver.bytes` (the bytes of the
dataset's files it archived or retrieved), the audit run its `archiver.audit.*` summary.
"""

from __future__ import annotations

LABEL_PREFIX = "archiver."
BYTES = LABEL_PREFIX + "bytes"
DATABLOCKS = LABEL_PREFIX + "datablocks"
AUDIT_CHECKED = LABEL_PREFIX + "audit.checked"
AUDIT_BYTES = LABEL_PREFIX + "audit.bytes"
AUDIT_PROBLEMS = LABEL_PREFIX + "audit.problems"


def record_figures(figures: dict[str, int]) -> None:
    """Add `figures` (label -> number) to the labels of the current flow run. For metrics: a failure is
    logged, never raised (the data is safe either way; the exporter then undercounts this run)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(context.flow_run.id, figures)
    except Exception as e:
        get_run_logger().warning("figures %s not recorded on the flow run (Prefect API: %s); metrics miss them",
                                 figures, e)


def figure(labels: dict | None, name: str) -> int:
    """A recorded figure of a flow run's labels; 0 when the run recorded none."""
    value = (labels or {}).get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
