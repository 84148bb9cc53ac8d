"""Cleaning up after a dataset: failed archivals, failed retrievals, and the landing zone once archived;
pruning what failed archivals set aside on the LTS once it is old enough."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

from archiver.packing import naming
from archiver.storage.lts import StoredEntry
from archiver.storage.lts_store import LtsStore
from archiver.storage.multipart import abort_uploads
from archiver.storage.s3 import abort_multipart_uploads, delete_prefix

DISCARDED = "discarded"
_DISCARDED_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def _new_discarded_folder(dataset_folder: str, now: datetime | None = None) -> str:
    return f"{dataset_folder}/{DISCARDED}/{(now or datetime.now(UTC)).strftime(_DISCARDED_TIME_FORMAT)}"


def set_aside_datablocks(store: LtsStore, archive_ids: list[str]) -> list[str]:
    """Move the named datablocks (tar and manifest) of a dataset into `discarded/{UTC time}/` beside
    `datablocks/`; every other datablock stays where it is. Returns the new keys of what was moved
    (datablocks already gone are skipped)."""
    moved: list[str] = []
    when = datetime.now(UTC)
    for archive_id in archive_ids:
        target = _new_discarded_folder(naming.dataset_key_of(archive_id), when)  # refuses ids outside datablocks/
        moved += store.set_aside([archive_id, naming.manifest_id(archive_id)], target)
    return moved


@dataclass(frozen=True)
class DiscardedFolder:
    key: str  # in the LTS store
    set_aside: datetime
    size_bytes: int
    kept_because: str | None = None  # None: deleted (or, in a dry run, would be)


def prune_discarded(
    store: LtsStore,
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
    found: list[DiscardedFolder] = []
    for dataset in _real_folders(store, naming.DATASETS_PREFIX):
        dataset_folder = f"{naming.DATASETS_PREFIX}/{dataset.name}"
        if not any(entry.name == DISCARDED for entry in _real_folders(store, dataset_folder)):
            continue
        discarded = f"{dataset_folder}/{DISCARDED}"
        old = [
            (f"{discarded}/{entry.name}", when)
            for entry in _real_folders(store, discarded)
            if (when := set_aside_time(entry)) < cutoff
        ]
        lost = _registered_but_missing(store, dataset.name, registered) if old and registered else set()
        for folder, set_aside in old:
            held = {entry.name for entry in store.entries(folder)}
            only_copies = sorted(lost & held)
            kept_because = f"only copy of registered datablock(s) {', '.join(only_copies)}" if only_copies else None
            found.append(DiscardedFolder(folder, set_aside, store.size(folder), kept_because))
            if not dry_run and kept_because is None:
                store.remove_folder(folder)
        if not dry_run and not store.entries(discarded):
            store.remove_folder(discarded, only_if_empty=True)
    return sorted(found, key=lambda f: f.set_aside)


def _real_folders(store: LtsStore, folder: str) -> list[StoredEntry]:
    """The folders in `folder` that are no symbolic links."""
    return [entry for entry in store.entries(folder) if entry.is_folder and not entry.is_link]


def freed_bytes(found: list[DiscardedFolder]) -> int:
    return sum(f.size_bytes for f in found if f.kept_because is None)


def _registered_but_missing(store: LtsStore, safe: str, registered: Callable[[str], Iterable[str]]) -> set[str]:
    """File names of the dataset's registered datablocks that are not under `datablocks/`."""
    listed: dict[str, list[str]] = {}
    missing = set()
    for archive_id in registered(naming.pid_from_safe_name(safe)):
        key = PurePosixPath(naming.check_archive_id(archive_id))
        folder = str(key.parent)
        if folder not in listed:
            listed[folder] = store.datablock_names(folder)
        if key.name not in listed[folder]:
            missing.add(key.name)
    return missing


def set_aside_time(entry: StoredEntry) -> datetime:
    """When a folder in `discarded/` was set aside: the time in its name, else its modification time."""
    try:
        return datetime.strptime(entry.name, _DISCARDED_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return entry.modified


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
