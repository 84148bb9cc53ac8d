"""Housekeeping deployments: pruning what failed archivals set aside on the LTS; deleting expired retrievals."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from archiver.clients.connections import connect, open_lts
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import PRUNING, RETRIEVAL_CLEANUP
from archiver.config.runtime import load_run_configuration
from archiver.packing import cleanup, retained

retry_refused_connections()  # before this flow run makes a Prefect client (clients/outage.py)

PRUNE_SCHEDULE_CRON = "30 3 * * *"  # daily, 03:30 UTC
RETRIEVAL_CLEANUP_CRON = "15 4 * * *"  # daily, 04:15 UTC


def registered_in(scicat):
    """pid -> archiveIds SciCat lists for the dataset (none for a dataset SciCat does not know)."""
    from archiver.scicat.client import ScicatError

    def registered(pid: str) -> list[str]:
        try:
            return [d.archive_id for d in scicat.get_datablocks(pid)]
        except ScicatError as e:
            if e.status_code == 404:
                return []
            raise

    return registered


@flow(name=PRUNING.flow, flow_run_name="prune-discarded")
def prune_discarded_flow(older_than_days: int | None = None, dry_run: bool = False) -> int:
    """Delete `discarded/` folders on the LTS older than `older_than_days` (default LTS_DISCARDED_RETENTION_DAYS);
    returns the bytes freed (with `dry_run`: that would be freed). `datablocks/` is never touched."""
    log = get_run_logger()
    config = load_run_configuration()
    lts = config.settings.lts
    days = lts.discarded_retention_days if older_than_days is None else older_than_days
    store = open_lts(lts)
    with connect(config) as connections:
        found = cleanup.prune_discarded(
            store,
            days,
            dry_run=dry_run,
            registered=registered_in(connections.scicat),
        )
    freed = cleanup.freed_bytes(found)
    deleted = sum(1 for f in found if f.kept_because is None)
    verb = "would delete" if dry_run else "deleted"
    rows = [
        {
            "folder": f.key,
            "set aside": f.set_aside.isoformat(),
            "bytes": f.size_bytes,
            "action": f"kept: {f.kept_because}" if f.kept_because else verb,
        }
        for f in found
    ]
    create_table_artifact(
        rows,
        key="prune-discarded",
        description=f"discarded/ folders older than {days} day(s): {verb} {deleted}, {freed} bytes freed, "
        f"{len(found) - deleted} kept",
    )
    for f in found:
        if f.kept_because:
            log.warning("kept %s: %s", f.key, f.kept_because)
    log.info(
        "%s %d discarded folder(s) older than %d day(s) under %s: %d bytes",
        verb,
        deleted,
        days,
        store.location,
        freed,
    )
    return freed


@flow(name=RETRIEVAL_CLEANUP.flow, flow_run_name="clean-retrievals")
def clean_retrievals_flow(dry_run: bool = False) -> int:
    """Delete retrieved objects whose retention (`retain-until`, S3_RETRIEVAL_RETENTION_DAYS after the last
    retrieval asking for them) has passed; returns the bytes freed (with `dry_run`: that would be freed)."""
    log = get_run_logger()
    config = load_run_configuration()
    minio = config.settings.s3
    with connect(config) as connections:
        report = retained.clean_expired(
            connections.s3,
            minio.retrieval_bucket,
            open_lts(config.settings.lts),
            minio.retrieval_retention_days,
            dry_run=dry_run,
        )
    verb = "would delete" if dry_run else "deleted"
    rows = [
        {
            "dataset": pid,
            "object": obj.key,
            "bytes": obj.size,
            "retain until": obj.retain_until.isoformat() if obj.retain_until else "untagged",
            "action": verb,
        }
        for pid, obj in report.expired
    ]
    rows += [
        {"dataset": pid, "object": "", "bytes": 0, "retain until": "", "action": "skipped: being retrieved"}
        for pid in report.busy
    ]
    create_table_artifact(
        rows,
        key="clean-retrievals",
        description=f"Expired retrievals in {minio.retrieval_bucket}: {verb} {len(report.expired)} "
        f"object(s), {report.freed_bytes} bytes freed; {len(report.busy)} dataset(s) busy",
    )
    log.info(
        "%s %d expired object(s) in %s: %d bytes; %d dataset(s) being retrieved skipped",
        verb,
        len(report.expired),
        minio.retrieval_bucket,
        report.freed_bytes,
        len(report.busy),
    )
    return report.freed_bytes
