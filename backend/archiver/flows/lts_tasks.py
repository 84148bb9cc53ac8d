"""Tasks that touch the LTS, and the retry rule of LTS work. Reads and writes of datablocks run in slices
(flows/lts_slices.py); the wait for free space is a task called with its limit's tag (`tagged`), so that
limit too holds across every flow-run container at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from archiver.config.limits import TagLimit
from archiver.errors import ArchiverError, retry_may_help
from archiver.packing import archive, cleanup, naming
from archiver.packing.errors import IntegrityError
from archiver.packing.records import Manifest
from archiver.storage import lts
from archiver.storage.lts_store import LtsStore


def may_retry_storage(error: BaseException) -> bool:
    """Retry storage hiccups; never a user's mistake, a checksum mismatch, a refused name, a full LTS or a run
    that must stop (`retry_may_help`)."""
    return retry_may_help(error) and not lts.is_full(error)


# LTS work in slices (flows/lts_slices.py): a storage hiccup gets two more tries, after these delays.
STORAGE_RETRY_DELAYS = [10, 60]


def tagged(lts_task: Task, limit: TagLimit) -> Callable:
    """The task with the limit's tag, called through a gate of the limit's size for the calls made through
    this one callable (one dataset's datablocks). Prefect makes a task denied a slot ask again after a
    Retry-After of up to PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS; a dataset's datablocks
    queued here instead get the slot the moment their sibling releases it. The limit itself is Prefect's,
    across runs and containers."""
    tagged_task = lts_task.with_options(tags=[limit.tag])
    gate = threading.BoundedSemaphore(max(1, limit.limit))

    def call(*args, **kwargs):
        with gate:
            return tagged_task(*args, **kwargs)

    return call


@task(name="wait-for-free-space", task_run_name="wait for free space on the LTS", cache_policy=NO_CACHE)
def wait_for_free_space(lts_root: Path, min_free_percentage: float, timeout_s: float) -> float:
    return lts.wait_for_free_space(lts_root, min_free_percentage, timeout_s)


def verify_stored_datablock(store: LtsStore, archive_id: str, file_timeout_s: float, on_bytes=None) -> Manifest:
    """The datablock checked against its manifest as the store verifies: read back once readable (tape may
    recall it first), or by the checksum a cold store keeps, restoring nothing."""
    return archive.verify_datablock(store, archive_id, on_bytes=on_bytes, file_timeout_s=file_timeout_s)


@dataclass
class StoredChecks:
    checked: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)  # archiveId -> what is wrong
    without_checksum: list[str] = field(default_factory=list)  # archiveIds whose manifest records none


@task(
    name="check-stored-checksums",
    task_run_name="check the stored checksums of {count} datablock(s)",
    cache_policy=NO_CACHE,
)
def check_stored_checksums(archive_ids: list[str], store: LtsStore, count: int) -> StoredChecks:
    """The problems of each datablock whose stored size or checksum disagrees with its manifest, or that could
    not be checked; and those whose manifest records no checksum of the store's (written before it did: only a
    re-read verifies them). One task run for all: a manifest read and a HeadObject per datablock, no restore."""
    checks = StoredChecks()
    for archive_id in archive_ids:
        try:
            manifest = archive.manifest_of(store, archive_id)
            if manifest.storedChecksum is None:
                checks.without_checksum.append(archive_id)
                continue
            archive.verify_datablock(store, archive_id, manifest=manifest)
        except IntegrityError as e:
            checks.problems[archive_id] = list(e.problems)
        except (OSError, ArchiverError) as e:
            checks.problems[archive_id] = [f"not checkable: {type(e).__name__}: {e}"]
        checks.checked += 1
    return checks


@task(name="bring-back-datablocks", task_run_name="bring back {n} datablock(s) from the LTS", cache_policy=NO_CACHE)
def bring_back_datablocks(
    store: LtsStore, n: int, archive_ids: list[str], file_timeout_s: float, on_states=None
) -> None:
    """Restores (recalls) asked for all at once and waited for; no retries: a store's deadline is its own."""
    store.wait_until_all_readable([naming.check_archive_id(a) for a in archive_ids], file_timeout_s, on_states)


@task(
    name="set-aside-unverified-datablocks",
    task_run_name="set aside datablocks that failed verification",
    cache_policy=NO_CACHE,
)
def set_aside_datablocks(store: LtsStore, archive_ids: list[str]) -> list[str]:
    return cleanup.set_aside_datablocks(store, archive_ids)
