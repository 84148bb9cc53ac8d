"""The `lts_audit` flow: re-verify the datablocks verified longest ago and reconcile the LTS with SciCat.

Fixity reads run in slice task runs tagged with VERIFY_LTS_LIMIT's tag (flows/lts_slices.py), as the
archival's verifications do, so an audit never takes more LTS read slots than verification after archival
may. Every problem is a row of the run's table artifact and a Prefect event (`archiver.lts-audit.problem`)
that an automation can notify on; the run ends Failed when there is any.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from archiver.clients.connections import connect, open_lts
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import AUDIT
from archiver.config.runtime import load_run_configuration
from archiver.errors import ArchiverError
from archiver.flows.figures import AUDIT_BYTES, AUDIT_CHECKED, AUDIT_PROBLEMS, record_figures, wait_for_figures
from archiver.flows.lts_slices import LtsStream
from archiver.flows.lts_tasks import StoredChecks, check_stored_checksums, verify_stored_datablock
from archiver.packing import archive, audit
from archiver.packing.errors import IntegrityError
from archiver.packing.records import Manifest
from archiver.scicat.client import DATABLOCK_PAGE_SIZE, ScicatError
from archiver.storage.lts_store import LtsStore, require_lts

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


@flow(name=AUDIT.flow, flow_run_name="lts-audit")
def lts_audit(
    pids: list[str] | None = None,
    everything: bool = False,
    byte_budget_mb: int | None = None,
    scicat_page_size: int = DATABLOCK_PAGE_SIZE,
) -> dict:
    """Audit the LTS: fixity of the datablocks verified longest ago (read back within LTS_AUDIT_BUDGET_MB, on a
    cold s3 store restored and read back within LTS_AUDIT_RESTORE_BUDGET_MB, or `byte_budget_mb`; all of them
    with `everything` or `pids`), on a cold store the checksum S3 keeps of every datablock, and consistency
    of every dataset on the LTS (only `pids` when given) with SciCat; without `pids` also every datablock
    SciCat holds, listed in pages of `scicat_page_size`, against the LTS. Fails naming every problem found."""
    config = load_run_configuration()
    lts = config.settings.lts
    require_lts(lts)
    store = open_lts(lts)
    now = datetime.now(UTC)
    datasets, findings = audit.inventory(store, pids)
    blocks = audit.stored_datablocks(store, datasets)
    budget_mb = byte_budget_mb or (lts.audit_budget_mb if store.verification_reads else lts.audit_restore_budget_mb)
    budget = None if everything or pids else budget_mb * 1024 * 1024
    chosen = audit.select_for_fixity(blocks, budget, oldest_always=store.verification_reads)
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
    stored = StoredChecks()
    if not store.verification_reads:  # the checksums a cold store keeps, of every datablock, restoring none
        stored, stored_rows, stored_problems = _check_stored_checksums(blocks, store)
        rows, problems = rows + stored_rows, problems + stored_problems
    findings = problems + findings
    rows += [
        {"dataset": f.pid, "datablock": f.what, "bytes": None, "result": f"{f.kind}: {f.detail}"}
        for f in findings
        if f not in problems
    ]
    summary = {
        "checked": len(chosen),
        "bytes": sum(b.packed_size for b in chosen),
        "checksums_checked": stored.checked,
        "without_stored_checksum": len(stored.without_checksum),
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
        budget = "LTS_AUDIT_BUDGET_MB" if lts.backend == "posix" else "LTS_AUDIT_RESTORE_BUDGET_MB"
        log.warning(
            "%d datablock(s) not read back within LTS_AUDIT_PERIOD_DAYS=%d: raise %s (now %d) to at least the "
            "LTS size divided by the period",
            summary["overdue"],
            lts.audit_period_days,
            budget,
            getattr(lts, budget.removeprefix("LTS_").lower()),
        )
    log.info(
        "re-verified %d datablock(s), %d bytes; checked the stored checksums of %d; %d problem(s)",
        summary["checked"],
        summary["bytes"],
        summary["checksums_checked"],
        len(findings),
    )
    if summary["without_stored_checksum"]:
        log.warning(
            "%d datablock(s) have no stored checksum in their manifest (written before the store recorded one): "
            "only their re-reads, within the restore budget, verify them",
            summary["without_stored_checksum"],
        )


def _check_fixity(
    chosen: list[audit.StoredDatablock], config, store: LtsStore, registered: dict, scicat
) -> tuple[list[dict], list]:
    """Read each chosen datablock back, one at a time, in slices holding a VERIFY_LTS_LIMIT slot (a cold store
    restores it first), compare it with SciCat and keep the outcome beside its manifest as soon as it is read;
    the table rows and the problems."""
    lts = config.settings.lts
    # Fetched before any read: no SciCat call while the slot is held.
    pids = dict.fromkeys(block.pid for block in chosen)
    origdatablocks = {pid: _registered(scicat.get_origdatablocks, pid) or [] for pid in pids}
    found: dict[str, list[audit.Finding]] = {}

    def read_back(block: audit.StoredDatablock) -> Manifest:
        if store.verification_reads:
            return verify_stored_datablock(store, block.archive_id, lts.file_timeout_s)
        return archive.reread_datablock(store, block.archive_id, lts.file_timeout_s)

    def keep(block: audit.StoredDatablock, outcome: Manifest | BaseException) -> None:
        problems = _fixity_findings(block, outcome, registered.get(block.pid), origdatablocks[block.pid])
        audit.record_verification(store, block.archive_id, datetime.now(UTC), [f.detail for f in problems])
        found[block.archive_id] = problems

    def check(block: audit.StoredDatablock) -> Manifest:
        try:
            manifest = read_back(block)
        except Exception as error:
            keep(block, error)
            raise
        keep(block, manifest)
        return manifest

    what = "verification" if store.verification_reads else "re-read"
    reads = LtsStream(
        config.limits.VERIFY_LTS_LIMIT,
        lambda block: f"{what} of {block.archive_id}",
        check,
        lts.slot_slice_s,
        "audit fixity reads",
        items=chosen,
    )
    rows, findings = [], []
    for block, outcome in zip(chosen, reads.run(1), strict=True):
        if isinstance(outcome, BaseException) and block.archive_id not in found:
            raise outcome  # not read (the stream stopped), or its outcome could not be kept
        problems = found[block.archive_id]
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


def _check_stored_checksums(
    blocks: list[audit.StoredDatablock], store: LtsStore
) -> tuple[StoredChecks, list[dict], list[audit.Finding]]:
    """The size and checksum a cold store keeps of each datablock against its manifest (no restore); a
    datablock that disagrees is recorded as failed, so the next runs re-read it first. What was checked, and
    rows and problems of those that disagree."""
    checks = check_stored_checksums([b.archive_id for b in blocks], store, len(blocks))
    problems = checks.problems
    rows, findings = [], []
    for block in blocks:
        if block.archive_id not in problems:
            continue
        found = audit.Finding("fixity", block.pid, block.archive_id, "; ".join(problems[block.archive_id]))
        audit.record_verification(store, block.archive_id, datetime.now(UTC), problems[block.archive_id])
        findings.append(found)
        rows.append(
            {"dataset": block.pid, "datablock": block.archive_id, "bytes": None, "result": f"fixity: {found.detail}"}
        )
    return checks, rows, findings


def _fixity_findings(
    block: audit.StoredDatablock, outcome: Manifest | BaseException, registered: list | None, origs: list
) -> list[audit.Finding]:
    """The problems of a datablock read back: `outcome` is its manifest, or the error the read raised."""
    if isinstance(outcome, IntegrityError):
        return [audit.Finding("fixity", block.pid, block.archive_id, "; ".join(outcome.problems))]
    if isinstance(outcome, BaseException):
        return [
            audit.Finding("fixity", block.pid, block.archive_id, f"not readable: {type(outcome).__name__}: {outcome}")
        ]
    manifest = outcome
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
