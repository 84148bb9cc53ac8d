"""Cleaning up after a dataset: failed archivals, failed retrievals, and the landing zone once archived;
pruning what failed archivals set aside on the LTS once it is old enough."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from archiver.packing import naming
from archiver.storage.lts import fsync_dir
from archiver.storage.multipart import abort_uploads
from archiver.storage.s3 import abort_multipart_uploads, delete_prefix

DISCARDED = "discarded"
_DISCARDED_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def _new_discarded_folder(dataset_folder: Path, now: datetime | None = None) -> Path:
    return dataset_folder / DISCARDED / (now or datetime.now(UTC)).strftime(_DISCARDED_TIME_FORMAT)


def set_aside_datablocks(lts_root: Path, archive_ids: list[str]) -> list[Path]:
    """Move the named datablocks (tar and manifest) of a dataset into `discarded/{UTC time}/` beside
    `datablocks/`; every other datablock stays where it is. Returns the new paths of what was moved
    (datablocks already gone are skipped)."""
    moved: list[Path] = []
    touched: set[Path] = set()
    when = datetime.now(UTC)
    for archive_id in archive_ids:
        tar_path = naming.datablock_path(lts_root, archive_id)  # refuses ids outside a datablocks/ folder
        target = _new_discarded_folder(tar_path.parent.parent, when)
        for path in (tar_path, naming.manifest_path(tar_path)):
            if not path.exists():
                continue
            target.mkdir(parents=True, exist_ok=True)
            os.rename(path, target / path.name)
            moved.append(target / path.name)
            touched.update((target, path.parent))
    for folder in touched:
        fsync_dir(folder)
    return moved


@dataclass(frozen=True)
class DiscardedFolder:
    path: Path
    set_aside: datetime
    size_bytes: int
    kept_because: str | None = None  # None: deleted (or, in a dry run, would be)


def prune_discarded(
    lts_root: Path,
    older_than_days: float,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    registered: Callable[[str], Iterable[str]] | None = None,
) -> list[DiscardedFolder]:
    """Delete the `discarded/<UTC time>/` folders of every dataset on the LTS set aside more than
    `older_than_days` ago (the time in the folder's name; its mtime if the name is not one).

    Only folders directly inside a dataset's `discarded/` are touched, never `datablocks/`, and no
    symbolic link is followed. `registered(pid)` gives the archiveIds SciCat lists for a dataset: a
    folder holding the only copy of a registered datablock (its file missing from `datablocks/`) is
    kept and reported with `kept_because`. Returns every folder old enough, oldest first; those
    without `kept_because` were deleted (with `dry_run`: would be)."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be 0 or more, got {older_than_days}")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    datasets = Path(lts_root) / naming.DATASETS_PREFIX
    found: list[DiscardedFolder] = []
    for discarded in sorted(datasets.glob(f"*/{DISCARDED}")):
        if discarded.is_symlink() or not discarded.is_dir() or discarded.parent.is_symlink():
            continue
        old = [
            (folder, when)
            for folder in sorted(discarded.iterdir())
            if not folder.is_symlink() and folder.is_dir() and (when := set_aside_time(folder)) < cutoff
        ]
        lost = _registered_but_missing(lts_root, discarded.parent.name, registered) if old and registered else set()
        for folder, set_aside in old:
            only_copies = sorted(name for name in lost if (folder / name).exists())
            kept_because = f"only copy of registered datablock(s) {', '.join(only_copies)}" if only_copies else None
            found.append(DiscardedFolder(folder, set_aside, _tree_size(folder), kept_because))
            if not dry_run and kept_because is None:
                shutil.rmtree(folder)
        if not dry_run and not any(discarded.iterdir()):
            discarded.rmdir()
    return sorted(found, key=lambda f: f.set_aside)


def freed_bytes(found: list[DiscardedFolder]) -> int:
    return sum(f.size_bytes for f in found if f.kept_because is None)


def _registered_but_missing(lts_root: Path, safe: str, registered: Callable[[str], Iterable[str]]) -> set[str]:
    """File names of the dataset's registered datablocks that are not under `datablocks/`."""
    return {
        Path(archive_id).name
        for archive_id in registered(naming.pid_from_safe_name(safe))
        if not naming.datablock_path(lts_root, archive_id).exists()
    }


def set_aside_time(folder: Path) -> datetime:
    try:
        return datetime.strptime(folder.name, _DISCARDED_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(folder.lstat().st_mtime, UTC)


def _tree_size(folder: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            total += (Path(parent) / name).lstat().st_size
    return total


def delete_retrieved(s3, bucket: str, pid: str) -> int:
    """Remove a dataset's objects (and unfinished uploads) from the retrieval bucket; returns objects deleted."""
    return delete_prefix(s3, bucket, naming.retrieval_prefix(pid))


def delete_landing_zone_files(s3, bucket: str, pid: str) -> int:
    """Remove a dataset's files from the landing zone, aborting its unfinished uploads and releasing their
    budget reservations. Only after its datablocks are verified and registered."""
    prefix = naming.landing_prefix(pid)
    abort_uploads(s3, bucket, prefix)
    return delete_prefix(s3, bucket, prefix)


def abort_retrieval_uploads(s3, bucket: str, pid: str) -> int:
    """Abort a dataset's unfinished uploads to the retrieval bucket, left by a dead run; finished objects stay.
    (A live retrieval of the same dataset by another job loses its upload too and retries it.)"""
    return abort_multipart_uploads(s3, bucket, naming.retrieval_prefix(pid))
