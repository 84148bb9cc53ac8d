"""The `lts_audit` flow: re-verify the datablocks verified longest ago and reconcile the LTS with SciCat.

Fixity reads go through the archival's own `verify-datablocks-in-lts` task, tagged with VERIFY_LTS_LIMIT,
so an audit never takes more LTS read slots than verification after archival may. Every problem is a
row of the run's table artifact and a Prefect event (`archiver.lts-audit.problem`) that an automation
can notify on; the run ends Failed when there is any.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from archiver.clients.connections import connect
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import AUDIT
from archiver.config.errors import ConfigError
from archiver.config.runtime import load_run_configuration
from archiver.errors import ArchiverError
from archiver.flows.figures import AUDIT_BYTES, AUDIT_CHECKED, AUDIT_PROBLEMS, record_figures, wait_for_figures
from archiver.flows.lts_tasks import tagged, verify_datablock
from archiver.flows.task_states import exception_of
from archiver.packing import audit
from archiver.packing.errors import IntegrityError
from archiver.packing.records import Manifest
from archiver.scicat.client import DATABLOCK_PAGE_SIZE, ScicatError
from archiver.storage.lts_store import LtsStore, open_store

retry_refused_connections()  # before this flow run makes a Prefect client (clients/outage.py)

PROBLEM_EVENT = "archiver.lts-audit.problem"


class LtsAuditFailed(ArchiverError):
    """The audit found problems; the message lists each, naming dataset and datablock."""

    def __init__(self, findings: list[audit.Finding]):
        self.findings = findings
        super().__init__(f"LTS audit found {len(findings)} problem(s):\n" + "\n".join(f.line() for f in findings))

    def __reduce__(self):
        return type(self), (self.findings,)


def _registered(call, pid: str) -> list | None:
    """SciCat's records `call` gives for the dataset (JSON fields); None when SciCat does not know the dataset."""
    try:
        return [item.to_wire() for item in call(pid)]
    except ScicatError as e:
        if e.status_code == 404:
            return None
        raise


def require_lts(root) -> None:
    if not root.is_dir():
        raise ConfigError(f"LTS_STORAGE_ROOT {root} is not a folder here; mount the LTS or set LTS_STORAGE_ROOT")


@flow(name=AUDIT.flow, flow_run_name="lts-audit")
def lts_audit(
    pids: list[str] | None = None,
    everything: bool = False,
    byte_budget_mb: int | None = None,
    scicat_page_size: int = DATABLOCK_PAGE_SIZE,
) -> dict:
    """Audit the LTS: fixity of the datablocks verified longest ago (within LTS_AUDIT_BUDGET_MB, or
    `byte_budget_mb`; all of them with `everything` or `pids`) and consistency of every dataset on the
    LTS (only `pids` when given) with SciCat; without `pids` also every datablock SciCat holds, listed in
    pages of `scicat_page_size`, against the LTS. Fails naming every problem found."""
    config = load_run_configuration()
    lts = config.settings.lts
    require_lts(lts.storage_root)
    store = open_store(lts)
    now = datetime.now(UTC)
    datasets, findings = audit.inventory(store, pids)
    blocks = audit.stored_datablocks(store, datasets)
    budget = None if everything or pids else (byte_budget_mb or lts.audit_budget_mb) * 1024 * 1024
    chosen = audit.select_for_fixity(blocks, budget)
    late = audit.overdue(set(blocks) - set(chosen), timedelta(days=lts.audit_period_days), now)
    with connect(config) as connections:
        scicat = connections.scicat
        registered = {pid: _registered(scicat.get_datablocks, pid) for pid in datasets}
        for pid, dataset in datasets.items():
            findings += audit.consistency_findings(
                dataset,
                registered[pid],
                now=now,
                partial_age=timedelta(hours=lts.audit_partial_age_hours),
                discarded_retention=timedelta(days=lts.discarded_retention_days),
            )
        listed = 0
        if pids is None:
            listed, lost = _lost_of_every_dataset(scicat, store, datasets, scicat_page_size)
            findings += lost
        rows, problems = _check_fixity(chosen, config, store, registered, scicat)
    findings = problems + findings
    rows += [
        {"dataset": f.pid, "datablock": f.what, "bytes": None, "result": f"{f.kind}: {f.detail}"}
        for f in findings
        if f not in problems
    ]
    summary = {
        "checked": len(chosen),
        "bytes": sum(b.packed_size for b in chosen),
        "problems": len(findings),
        "overdue": len(late),
        "datablocks": len(blocks),
        "scicat_datablocks_listed": listed,
    }
    _report(summary, rows, findings, lts)
    record_figures({AUDIT_CHECKED: summary["checked"], AUDIT_BYTES: summary["bytes"], AUDIT_PROBLEMS: len(findings)})
    wait_for_figures()
    if findings:
        raise LtsAuditFailed(findings)
    return summary


def _lost_of_every_dataset(scicat, store: LtsStore, datasets: dict, page_size: int) -> tuple[int, list[audit.Finding]]:
    """Every datablock SciCat holds, page by page, against the LTS: those of datasets whose folder is gone
    (or was never written) are found here; the inventoried datasets were compared already. How many were
    listed, and the findings."""
    listed = 0

    def registered():
        nonlocal listed
        for block in scicat.iter_datablocks(page_size):
            listed += 1
            yield block.dataset_id, block.archive_id, block.packed_size

    lost = list(audit.lost_beyond_inventory(store, registered(), datasets))
    return listed, lost


def _report(summary: dict, rows: list[dict], findings: list[audit.Finding], lts) -> None:
    """The run's table artifact, an event per problem, and the log."""
    log = get_run_logger()
    create_table_artifact(
        rows,
        key="lts-audit",
        description=f"LTS audit: {summary['checked']} of {summary['datablocks']} datablock(s) re-verified "
        f"({summary['bytes']} bytes), {summary['scicat_datablocks_listed']} SciCat datablock(s) listed, "
        f"{len(findings)} problem(s), {summary['overdue']} not verified within {lts.audit_period_days} day(s)",
    )
    for finding in findings:
        _announce(finding)
        log.error("%s", finding.line())
    if summary["overdue"]:
        log.warning(
            "%d datablock(s) not verified within LTS_AUDIT_PERIOD_DAYS=%d: raise LTS_AUDIT_BUDGET_MB "
            "(now %d) to at least the LTS size divided by the period",
            summary["overdue"],
            lts.audit_period_days,
            lts.audit_budget_mb,
        )
    log.info(
        "re-verified %d datablock(s), %d bytes; %d problem(s)", summary["checked"], summary["bytes"], len(findings)
    )


def _check_fixity(
    chosen: list[audit.StoredDatablock], config, store: LtsStore, registered: dict, scicat
) -> tuple[list[dict], list]:
    """Read each chosen datablock back (VERIFY_LTS_LIMIT's tag), compare it with SciCat, keep the outcome
    beside its manifest; the table rows and the problems."""
    lts = config.settings.lts
    verify = tagged(verify_datablock, config.limits.VERIFY_LTS_LIMIT)
    rows, findings, origdatablocks = [], [], {}
    for block in chosen:
        state = verify(store, block.archive_id, lts.file_timeout_s, return_state=True)
        if block.pid not in origdatablocks:
            origdatablocks[block.pid] = _registered(scicat.get_origdatablocks, block.pid) or []
        problems = _fixity_findings(block, state, registered.get(block.pid), origdatablocks[block.pid])
        audit.record_verification(store, block.archive_id, datetime.now(UTC), [f.detail for f in problems])
        findings += problems
        rows.append(
            {
                "dataset": block.pid,
                "datablock": block.archive_id,
                "bytes": block.packed_size,
                "result": "; ".join(f"{f.kind}: {f.detail}" for f in problems) or "verified",
            }
        )
    return rows, findings


def _fixity_findings(block: audit.StoredDatablock, state, registered: list | None, origs: list) -> list[audit.Finding]:
    error = exception_of(state)
    if isinstance(error, IntegrityError):
        return [audit.Finding("fixity", block.pid, block.archive_id, "; ".join(error.problems))]
    if error is not None:
        return [audit.Finding("fixity", block.pid, block.archive_id, f"not readable: {type(error).__name__}: {error}")]
    manifest: Manifest = state.result()
    findings = []
    wire = next((w for w in registered or [] if w.get("archiveId") == block.archive_id), None)
    if wire is not None:
        on_record = {(f["path"], f.get("size"), f.get("chk")) for f in wire.get("dataFileList", [])}
        if on_record != {(f.path, f.size, f.chk) for f in manifest.dataFileList}:
            findings.append(
                audit.Finding(
                    "scicat-mismatch",
                    block.pid,
                    block.archive_id,
                    "the files and checksums SciCat's datablock lists differ from the manifest's",
                )
            )
    for orig in origs:
        findings += audit.scicat_checksum_findings(
            block.pid,
            manifest.dataFileList,
            manifest.chkAlg,
            block.archive_id,
            orig.get("dataFileList", []),
            orig.get("chkAlg"),
        )
    return findings


def _announce(finding: audit.Finding) -> None:
    emit_event(
        event=PROBLEM_EVENT,
        resource={
            "prefect.resource.id": f"archiver.lts.{finding.what}",
            "prefect.resource.name": finding.what,
            "archiver.dataset": finding.pid,
            "archiver.problem": finding.kind,
        },
        payload={"kind": finding.kind, "dataset": finding.pid, "datablock": finding.what, "detail": finding.detail},
    )
