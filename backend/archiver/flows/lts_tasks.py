"""Tasks that touch the LTS. Each carries the tag of its limit in `concurrency-limits.toml` at run time,
so the limits hold across every flow-run container at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from archiver.config.limits import TagLimit
from archiver.errors import retry_may_help
from archiver.flows.task_states import exception_of
from archiver.packing import archive, cleanup, naming, partial, retrieve
from archiver.packing.records import DatablockRecord, Manifest
from archiver.storage import lts
from archiver.storage.lts_store import LtsStore


def may_retry_storage(error: BaseException) -> bool:
    """Retry storage hiccups; never a user's mistake, a checksum mismatch, a refused name, a full LTS or a run
    that must stop (`retry_may_help`)."""
    return retry_may_help(error) and not lts.is_full(error)


def _may_recover(task, task_run, state) -> bool:
    error = exception_of(state)
    return error is not None and may_retry_storage(error)


# Storage work that streams data: transient S3/LTS errors get two more tries, after these delays.
STORAGE_RETRY_DELAYS = [10, 60]
_STORAGE_RETRIES: dict[str, Any] = {
    "retries": len(STORAGE_RETRY_DELAYS),
    "retry_delay_seconds": STORAGE_RETRY_DELAYS,
    "retry_condition_fn": _may_recover,
    "cache_policy": NO_CACHE,
}


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


@task(name="verify-datablocks-in-lts", task_run_name="verify {archive_id}", cache_policy=NO_CACHE)
def verify_datablock(store: LtsStore, archive_id: str, file_timeout_s: float, on_bytes=None) -> Manifest:
    return verify_stored_datablock(store, archive_id, file_timeout_s, on_bytes)


def verify_stored_datablock(store: LtsStore, archive_id: str, file_timeout_s: float, on_bytes=None) -> Manifest:
    """The datablock read back once readable (tape may recall it first) and checked against its manifest."""
    store.wait_until_readable(naming.check_archive_id(archive_id), file_timeout_s)
    return archive.verify_datablock(store, archive_id, on_bytes=on_bytes)


@task(
    name="datablocks-lts-to-retrieval",
    task_run_name="retrieve {archive_id}",
    **_STORAGE_RETRIES,
)
def copy_datablock_to_retrieval(
    store: LtsStore,
    archive_id: str,
    s3,
    bucket: str,
    file_timeout_s: float,
    record: DatablockRecord,
    on_bytes=None,
) -> retrieve.RetrievedObject:
    return retrieve.retrieve_datablock(
        store, archive_id, s3, bucket, file_timeout_s=file_timeout_s, record=record, on_bytes=on_bytes
    )


@task(
    name="files-lts-to-retrieval",
    task_run_name="retrieve {n_files} file(s) of {archive_id}",
    **_STORAGE_RETRIES,
)
def copy_files_to_retrieval(
    store: LtsStore,
    archive_id: str,
    n_files: int,
    selection: partial.FileSelection,
    s3,
    bucket: str,
    file_timeout_s: float,
    on_bytes=None,
) -> list[retrieve.RetrievedObject]:
    return partial.retrieve_files(store, selection, s3, bucket, file_timeout_s=file_timeout_s, on_bytes=on_bytes)


@task(
    name="set-aside-unverified-datablocks",
    task_run_name="set aside datablocks that failed verification",
    cache_policy=NO_CACHE,
)
def set_aside_datablocks(store: LtsStore, archive_ids: list[str]) -> list[str]:
    return cleanup.set_aside_datablocks(store, archive_ids)
