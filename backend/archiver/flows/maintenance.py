"""Housekeeping deployments: pruning what failed archivals set aside on the LTS."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from archiver.config.runtime import load_run_configuration
from archiver.packing import cleanup

PRUNE_SCHEDULE_CRON = "30 3 * * *"  # daily, 03:30 UTC


@flow(name="prune_discarded", flow_run_name="prune-discarded")
def prune_discarded_flow(older_than_days: int | None = None, dry_run: bool = False) -> int:
    """Delete `discarded/` folders on the LTS older than `older_than_days` (default LTS_DISCARDED_RETENTION_DAYS);
    returns the bytes freed (with `dry_run`: that would be freed). `datablocks/` is never touched."""
    log = get_run_logger()
    lts = load_run_configuration().settings.lts
    days = lts.discarded_retention_days if older_than_days is None else older_than_days
    pruned = cleanup.prune_discarded(lts.storage_root, days, dry_run=dry_run)
    freed = sum(f.size_bytes for f in pruned)
    verb = "would delete" if dry_run else "deleted"
    rows = [{"folder": str(f.path.relative_to(lts.storage_root)), "set aside": f.set_aside.isoformat(),
             "bytes": f.size_bytes} for f in pruned]
    create_table_artifact(
        rows, key="prune-discarded",
        description=f"discarded/ folders older than {days} day(s): {verb} {len(pruned)}, {freed} bytes freed",
    )
    log.info("%s %d discarded folder(s) older than %d day(s) under %s: %d bytes", verb, len(pruned), days,
             lts.storage_root, freed)
    return freed
