"""Retrieved copies kept in the retrieval bucket: one per dataset, reused while it lasts, retention extended.

Every retrieved object carries an S3 object tag `retain-until` (UTC, ISO 8601): the cleanup
(`expired_objects`) deletes it once that time has passed. A retrieval that finds its objects already
there (`reusable`) only moves that date later. What is trusted about an object found in the bucket:
its size and the checksum metadata it was uploaded with (`retrieve.checksum_metadata`). An object
becomes visible only when its upload completes, which happens only after its bytes matched that
checksum, and only the archiver's account writes to the bucket; so an object whose size and
metadata equal the registered ones is a copy that was checked. Its bytes are not read again (S3
keeps its own integrity; the download script checks them once more at the user's end).

Retrievals and the cleanup of one dataset take turns by the LTS store's lock `{dataset}/.retrieving.lock`
(on a POSIX store an exclusive `flock`, like archival's write lock): it is freed the moment its holder
dies, so a killed run never blocks the dataset, and nothing piles up in Prefect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError

from archiver.errors import TryLaterError
from archiver.packing import naming
from archiver.packing.cleanup import abort_retrieval_uploads
from archiver.packing.errors import InvalidNameError
from archiver.packing.retrieve import CHK_ALG_METADATA, CHK_METADATA, RetrievedObject
from archiver.storage.lts_store import LtsStore
from archiver.storage.s3 import delete_keys, error_code, iter_objects

RETAIN_UNTIL_TAG = "retain-until"
LOCK_FILE_NAME = ".retrieving.lock"


class RetrievalBusyError(TryLaterError):
    """Another run retrieves (or cleans up) the dataset for longer than we wait."""


@contextlib.contextmanager
def retrieval_lock(store: LtsStore, pid: str, wait_s: float, poll_s: float = 1.0, on_wait=None) -> Iterator[None]:
    """Hold the dataset's retrieval lock; waits up to `wait_s` for another holder (RetrievalBusyError after).
    `on_wait()` is called once when the lock is busy (to say so in the log)."""

    def busy(lock: str) -> RetrievalBusyError:
        return RetrievalBusyError(
            f"dataset {pid}: another run has been retrieving or cleaning up its retrieved copy for more "
            f"than {wait_s:.0f}s (it holds {lock}); try the job again later"
        )

    with store.lock(f"{naming.dataset_key(pid)}/{LOCK_FILE_NAME}", wait_s, busy, on_wait, poll_s):
        yield


@contextlib.contextmanager
def try_retrieval_lock(store: LtsStore, pid: str) -> Iterator[bool]:
    """The dataset's retrieval lock if free at once (True), else nothing held (False): for the cleanup.
    A dataset without a folder on the LTS cannot be retrieved, so none is created for it."""
    if not store.is_folder(naming.dataset_key(pid)):
        yield True
        return
    try:
        lock = retrieval_lock(store, pid, wait_s=0)
        lock.__enter__()
    except RetrievalBusyError:
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


def retain_until(days: float, now: datetime | None = None) -> datetime:
    return ((now or datetime.now(UTC)) + timedelta(days=days)).replace(microsecond=0)


def _tag_value(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_retain_until(s3, bucket: str, key: str) -> datetime | None:
    """The object's `retain-until` tag; None when it has none or it is not a date."""
    tags = s3.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    value = next((t["Value"] for t in tags if t["Key"] == RETAIN_UNTIL_TAG), None)
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if value else None
    except ValueError:
        return None


def extend_retention(s3, bucket: str, key: str, until: datetime) -> datetime:
    """Set the object's `retain-until` to `until` unless it is later already; returns the date it has now."""
    current = read_retain_until(s3, bucket, key)
    if current is not None and current >= until:
        return current
    s3.put_object_tagging(
        Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": RETAIN_UNTIL_TAG, "Value": _tag_value(until)}]}
    )
    return until


def present_objects(s3, bucket: str, expected: list[RetrievedObject]) -> list[RetrievedObject]:
    """The expected objects that are in the bucket with the registered size and checksum metadata
    (module doc: what is trusted); one that differs counts as missing and is uploaded again."""
    found = []
    for want in expected:
        try:
            head = s3.head_object(Bucket=bucket, Key=want.key)
        except ClientError as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                continue
            raise
        metadata = head.get("Metadata", {})
        if (head["ContentLength"], metadata.get(CHK_ALG_METADATA), metadata.get(CHK_METADATA)) == (
            want.size,
            want.algorithm,
            want.chk,
        ):
            found.append(want)
    return found


def remove_dead_run_objects(s3, bucket: str, store: LtsStore, pid: str, now: datetime | None = None) -> int | None:
    """After a retrieval of `pid` died: abort its unfinished uploads and delete the dataset's objects that no
    finished retrieval handed out (no `retain-until` to come: a finished one sets it before making links).
    Copies that earlier jobs' links point to stay. Returns the objects deleted, or None when a live run holds
    the dataset's lock: what is there may be its work, left to it and to the scheduled cleanup."""
    now = now or datetime.now(UTC)
    with try_retrieval_lock(store, pid) as held:
        if not held:
            return None
        abort_retrieval_uploads(s3, bucket, pid)
        # Untagged objects of any age count: a dead run's uploads are untagged until it makes links.
        unretained = expired_objects(
            s3, bucket, naming.retrieval_prefix(pid), now, untagged_older_than=datetime.max.replace(tzinfo=UTC)
        )
        return delete_keys(s3, bucket, [obj.key for obj in unretained])


def bucket_bytes(s3, bucket: str) -> int:
    return sum(obj["Size"] for obj in iter_objects(s3, bucket, ""))


class RetrievalBudgetError(TryLaterError):
    def __init__(self, pid: str, needed: int, used: int, budget: int):
        super().__init__(
            f"dataset {pid}: retrieving it needs {needed} bytes in the retrieval bucket, but only "
            f"{max(budget - used, 0)} of its budget of {budget} bytes are free ({used} in use); nothing was "
            "retrieved: try again once expired retrievals are cleaned up, or raise S3_RETRIEVAL_BUDGET_GB"
        )


def check_budget(s3, bucket: str, pid: str, needed: int, budget_bytes: int | None) -> None:
    """Raise RetrievalBudgetError when `needed` more bytes would pass the bucket's budget (None: no budget)."""
    if budget_bytes is None:
        return
    used = bucket_bytes(s3, bucket)
    if used + needed > budget_bytes:
        raise RetrievalBudgetError(pid, needed, used, budget_bytes)


@dataclass(frozen=True)
class ExpiredObject:
    key: str
    size: int
    retain_until: datetime | None  # None: no tag (an object of a retrieval before retention existed)


def expired_objects(s3, bucket: str, prefix: str, now: datetime, untagged_older_than: datetime) -> list[ExpiredObject]:
    """Objects below `prefix` whose `retain-until` has passed; untagged ones last modified before
    `untagged_older_than`."""
    expired = []
    for obj in iter_objects(s3, bucket, prefix):
        until = read_retain_until(s3, bucket, obj["Key"])
        if (until is not None and until < now) or (until is None and obj["LastModified"] < untagged_older_than):
            expired.append(ExpiredObject(obj["Key"], obj["Size"], until))
    return expired


def retrieved_datasets(s3, bucket: str) -> list[str]:
    """PIDs of the datasets with objects in the retrieval bucket (prefixes that are no dataset's are skipped)."""
    pids = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=naming.DATASETS_PREFIX + "/", Delimiter="/"
    ):
        for common in page.get("CommonPrefixes", []):
            try:
                pids.append(naming.pid_from_safe_name(common["Prefix"].rstrip("/").rsplit("/", 1)[-1]))
            except InvalidNameError:
                continue
    return pids


@dataclass(frozen=True)
class CleanupReport:
    expired: list[tuple[str, ExpiredObject]]  # (pid, object): deleted, or with dry_run: would be
    busy: list[str]  # datasets being retrieved right now: left for the next run

    @property
    def freed_bytes(self) -> int:
        return sum(obj.size for _, obj in self.expired)


def clean_expired(
    s3, bucket: str, store: LtsStore, retention_days: float, *, dry_run: bool = False, now: datetime | None = None
) -> CleanupReport:
    """Delete the retrieval bucket's objects whose `retain-until` has passed (untagged ones, left by
    retrievals before retention existed, once older than `retention_days`), one dataset at a time under
    its retrieval lock; a dataset being retrieved is skipped."""
    now = now or datetime.now(UTC)
    expired, busy = [], []
    for pid in retrieved_datasets(s3, bucket):
        with try_retrieval_lock(store, pid) as held:
            if not held:
                busy.append(pid)
                continue
            found = expired_objects(s3, bucket, naming.retrieval_prefix(pid), now, now - timedelta(days=retention_days))
            if not dry_run:
                delete_keys(s3, bucket, [obj.key for obj in found])
            expired += [(pid, obj) for obj in found]
    return CleanupReport(expired, busy)
