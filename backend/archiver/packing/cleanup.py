"""Cleaning up after a dataset: failed archivals, failed retrievals, and the landing zone once archived."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from archiver.packing import naming
from archiver.storage.lts import fsync_dir
from archiver.storage.s3 import abort_multipart_uploads, delete_prefix


def set_aside_datablocks(lts_root: Path, archive_ids: list[str]) -> list[Path]:
    """Move the named datablocks (tar and manifest) of a failed archival to `discarded/{UTC time}/` beside
    their `datablocks/` folder: never mixed with good ones, kept for inspection. Returns where each went."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    moved = []
    for archive_id in archive_ids:
        tar_path = naming.datablock_path(lts_root, archive_id)
        target = tar_path.parent.parent / "discarded" / stamp
        target.mkdir(parents=True, exist_ok=True)
        for path in (tar_path, naming.manifest_path(tar_path)):
            if path.exists():
                os.rename(path, target / path.name)
                moved.append(target / path.name)
        fsync_dir(tar_path.parent)
        fsync_dir(target)
    return moved


def delete_retrieved(s3, bucket: str, pid: str) -> int:
    """Remove a dataset's objects (and unfinished uploads) from the retrieval bucket; returns objects deleted."""
    return delete_prefix(s3, bucket, naming.retrieval_prefix(pid))


def delete_landing_zone_files(s3, bucket: str, pid: str) -> int:
    """Remove a dataset's files from the landing zone. Only after its datablocks are verified and registered."""
    return delete_prefix(s3, bucket, naming.landing_prefix(pid))


def remove_partial_files(lts_root: Path, pid: str) -> list[Path]:
    """Delete a dataset's half-written files (`*.partial`) on the LTS, left by a run killed mid-write.
    Only for a run known to be dead: a live writer's file would be pulled from under it."""
    folder = naming.datablocks_folder(lts_root, pid)
    removed = sorted(folder.glob(f"*{naming.PARTIAL_SUFFIX}")) if folder.exists() else []
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_dir(folder)
    return removed


def abort_retrieval_uploads(s3, bucket: str, pid: str) -> int:
    """Abort a dataset's unfinished uploads to the retrieval bucket, left by a dead run; finished objects stay.
    (A live retrieval of the same dataset by another job loses its upload too and retries it.)"""
    return abort_multipart_uploads(s3, bucket, naming.retrieval_prefix(pid))
