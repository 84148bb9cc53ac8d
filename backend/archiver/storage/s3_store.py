"""The LTS as an S3 bucket with a cold storage class (AWS S3 GLACIER / DEEP_ARCHIVE style): the LtsStore of
LTS_BACKEND "s3".

A key is an object key below `prefix`. A datablock is streamed into a multipart upload in LTS_STORAGE_CLASS, each
part carrying its SHA-256; once every part is stored the manifest is written (STANDARD, small and read by every
archival), then the upload is completed: an object under a final name is complete, and a crash leaves at most a
manifest without a tar (a taken name) or an unfinished upload (removed by the next holder of the dataset's lock).
Neither is ever written over an existing object: both writes are conditional (`If-None-Match: *`), so a name is
never replaced even by a writer that lost its lock. Locks are lock objects with a lease (`s3_lease_lock.py`).
Verification restores nothing: the manifest records the composite SHA-256 of the parts as sent, which
`verify_datablock` compares with the one S3 keeps (HeadObject, answered for an archived object too).
Setting datablocks aside copies them (restored first, as S3 copies no archived object) and deletes the originals.

An object in an archive class (GLACIER, DEEP_ARCHIVE) is read only after a restore (RestoreObject, LTS_RESTORE_TIER,
LTS_RESTORE_DAYS) has finished: `wait_until_all_readable` asks for the restores of all the datablocks a job reads at
once, each only when no restore of it is under way, and polls HeadObject's `x-amz-restore` until every copy is
readable or LTS_RESTORE_TIMEOUT_HOURS have passed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO, TypeVar, cast

from botocore.exceptions import ClientError

from archiver.storage.lts import (
    PARTIAL_SUFFIX,
    AlreadyPublishedError,
    ReadState,
    StillFrozenError,
    StoredEntry,
    dataset_busy,
    problems_read_back,
)
from archiver.storage.s3 import (
    MultipartUpload,
    abort_multipart_uploads,
    composite_sha256,
    delete_prefix,
    error_code,
    iter_objects,
)
from archiver.storage.s3_lease_lock import GONE_CODES, LOST_WRITE_CODES, lease_lock

T = TypeVar("T")
LOCK_FILE_NAME = ".archiving.lock"
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
PART_SIZE = 64 * 1024 * 1024

# One restore request per object from this process: readers of one datablock ask in turn, the later ones see
# the restore under way (across processes S3 answers a second request 409 RestoreAlreadyInProgress).
_restore_guards: dict[str, threading.Lock] = {}
_restore_guards_lock = threading.Lock()


def _restore_guard(url: str) -> threading.Lock:
    with _restore_guards_lock:
        return _restore_guards.setdefault(url, threading.Lock())


@dataclass(frozen=True)
class RestorePolicy:
    """How archived datablocks are brought back: LTS_RESTORE_TIER, LTS_RESTORE_DAYS, LTS_RESTORE_TIMEOUT_HOURS;
    HeadObject is asked every `first_poll_s`, the interval doubling up to `max_poll_s`."""

    tier: str = "Bulk"
    days: int = 3
    timeout_s: float = 48 * 3600
    first_poll_s: float = 30.0
    max_poll_s: float = 600.0

    @classmethod
    def polling_within(cls, tier: str, days: int, timeout_s: float) -> RestorePolicy:
        """Polls every 30 s at first, up to every 10 min; a short deadline (a test's) polls within it: at first
        a 100th of it, up to a 20th."""
        return cls(tier, days, timeout_s, min(30.0, timeout_s / 100), min(600.0, timeout_s / 20))


@dataclass(frozen=True)
class S3ColdLtsStore:
    s3: Any = field(repr=False)  # a boto3 S3 client
    bucket: str
    prefix: str = ""
    storage_class: str = "DEEP_ARCHIVE"
    restore: RestorePolicy = RestorePolicy()
    part_size: int = PART_SIZE

    space_is_limited = False  # a bucket grows as written (and is billed per byte): free space does not apply

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")

    # --- writing ---

    @contextlib.contextmanager
    def lock_dataset(
        self, folder: str, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[list[str]]:
        """The lock object `.archiving.lock` beside the datablocks folder. Whoever holds it knows every
        unfinished upload in the folder is a dead writer's (a live one renews its lease): they are aborted, and
        their names (`<name>.partial`) yielded."""
        lock_key = f"{PurePosixPath(folder).parent}/{LOCK_FILE_NAME}"
        where = self._url(self._key(lock_key))

        with lease_lock(
            self.s3,
            self.bucket,
            self._key(lock_key),
            wait_s,
            lambda: dataset_busy(where, wait_s),
            (lambda: on_wait(where)) if on_wait else None,
        ):
            yield self._abort_unfinished(folder)

    def publish_datablock(
        self, key: str, manifest_key: str, write: Callable[[BinaryIO], T], manifest: Callable[[T, str | None], str]
    ) -> None:
        """`write` streams the datablock into a multipart upload; the manifest is written once every part is
        stored, with the composite SHA-256 of the parts as sent (the checksum S3 keeps of the object), then the
        upload completed. AlreadyPublishedError when either name is taken before anything is written,
        FileExistsError when one is taken meanwhile (the upload aborted, nothing replaced)."""
        tar_key, manifest_object = self._key(key), self._key(manifest_key)
        for taken in (tar_key, manifest_object):
            if self._head(taken) is not None:
                raise AlreadyPublishedError(errno.EEXIST, "already published", self._url(taken))
        with MultipartUpload(
            self.s3, self.bucket, tar_key, self.part_size, storage_class=self.storage_class, sha256_parts=True
        ) as upload:
            written = write(cast(BinaryIO, upload))
            with self._no_replace(tar_key):
                upload.complete(
                    before=lambda: self._put_new(
                        manifest_object, manifest(written, composite_sha256(upload.part_sha256))
                    ),
                    if_none_match=True,
                )

    def _put_new(self, key: str, text: str) -> None:
        with self._no_replace(key):
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=text.encode(), ContentType="application/json", IfNoneMatch="*"
            )

    @contextlib.contextmanager
    def _no_replace(self, key: str) -> Iterator[None]:
        try:
            yield
        except ClientError as e:
            if error_code(e) in LOST_WRITE_CODES:
                raise FileExistsError(errno.EEXIST, "taken while it was written", self._url(key)) from e
            raise

    # --- verifying ---

    verification_reads = False  # S3 keeps each object's size and SHA-256, readable without a restore

    def verify_datablock(
        self,
        key: str,
        size: int,
        stored_checksum: str | None,
        read_back: Callable[[BinaryIO], list[str]],
        timeout_s: float | None = None,
    ) -> list[str]:
        """HeadObject (which S3 answers for an archived object, no restore) against the manifest: the size, and
        the SHA-256 S3 keeps against the one computed while writing. S3 computed its own from the parts' bytes
        as it received them, refusing any part whose bytes did not match the SHA-256 sent along (BadDigest); an
        object written or replaced any other way has another checksum, or none. A datablock whose manifest
        recorded no checksum is read back (restored first, when `timeout_s` is given)."""
        object_key = self._key(key)
        url = self._url(object_key)
        if stored_checksum is None:
            return problems_read_back(self, key, read_back, timeout_s)
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=object_key, ChecksumMode="ENABLED")
        except ClientError as e:
            if error_code(e) in GONE_CODES:
                return [f"tar object {url} is missing"]
            raise _os_error(e, url) from e
        problems = []
        if head["ContentLength"] != size:
            problems.append(f"S3 stores {head['ContentLength']} bytes under {url}, the manifest records {size}")
        kept = head.get("ChecksumSHA256")
        if kept is None:
            problems.append(
                f"S3 keeps no SHA-256 of {url} (it was replaced since it was written, or the S3 service keeps no "
                f"checksums); the manifest records {stored_checksum}"
            )
        elif kept != stored_checksum:
            problems.append(
                f"S3's SHA-256 of {url} is {kept}, the one computed while writing it (in the manifest) "
                f"{stored_checksum}"
            )
        return problems

    # --- reading ---

    def wait_until_readable(self, key: str, timeout_s: float) -> None:
        self.wait_until_all_readable([key], timeout_s)

    def wait_until_all_readable(
        self, keys: list[str], timeout_s: float, on_states: Callable[[dict[str, ReadState]], None] | None = None
    ) -> None:
        """Asks at once for a restore of each archived datablock that is neither readable nor being restored (by
        this process or another: one request per object, whoever reads it), then polls them together until every
        copy is readable; `on_states` hears the states after the requests and after each poll. The deadline is
        LTS_RESTORE_TIMEOUT_HOURS: `timeout_s` (LTS_FILE_TIMEOUT_S) is a mount's. StillFrozenError names the
        datablocks not restored by then."""
        deadline = time.monotonic() + self.restore.timeout_s
        states = {key: self._readable_or_asked(key) for key in dict.fromkeys(keys)}
        interval = self.restore.first_poll_s
        while True:
            if on_states is not None:
                on_states(dict(states))
            waiting = [key for key, state in states.items() if state is not ReadState.READY]
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._still_frozen(waiting)
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, self.restore.max_poll_s)
            states.update((key, self._readable_or_asked(key)) for key in waiting)

    def _readable_or_asked(self, key: str) -> ReadState:
        """READY, or RESTORE_REQUESTED once a restore is under way (asked for here when there was none, or a
        restored copy expired)."""
        with _restore_guard(self._url(self._key(key))):
            state = self._restore_state(key)
            if state is ReadState.WAITING:
                self._ask_restore(key)
                state = ReadState.RESTORE_REQUESTED
        return state

    def _still_frozen(self, keys: list[str]) -> StillFrozenError:
        urls = [self._url(self._key(key)) for key in keys]
        shown = ", ".join(urls[:20]) + (f" and {len(urls) - 20} more" if len(urls) > 20 else "")
        which = f"datablock {shown} is" if len(urls) == 1 else f"{len(urls)} datablocks are ({shown})"
        return StillFrozenError(
            keys,
            f"{which} still frozen in {self.storage_class}: the restore (tier {self.restore.tier}) did not finish "
            f"within {self.restore.timeout_s / 3600:g} h (LTS_RESTORE_TIMEOUT_HOURS); check the restores in the S3 "
            "service, then run the job again (a finished restore stays readable for LTS_RESTORE_DAYS)",
        )

    def _restore_state(self, key: str) -> ReadState:
        """READY, RESTORE_REQUESTED (a restore is under way) or WAITING (archived, no restore asked or its copy
        expired)."""
        head = self._head(self._key(key))
        if head is None:
            raise FileNotFoundError(errno.ENOENT, "no such datablock", self._url(self._key(key)))
        if head.get("StorageClass", "STANDARD") not in ARCHIVE_CLASSES:
            return ReadState.READY
        restore = head.get("Restore")
        if restore is None:
            return ReadState.WAITING
        return ReadState.RESTORE_REQUESTED if 'ongoing-request="true"' in restore else ReadState.READY

    def _ask_restore(self, key: str) -> None:
        request = {"Days": self.restore.days, "GlacierJobParameters": {"Tier": self.restore.tier}}
        try:
            self.s3.restore_object(Bucket=self.bucket, Key=self._key(key), RestoreRequest=request)
        except ClientError as e:
            if error_code(e) != "RestoreAlreadyInProgress":
                raise

    def open_datablock(self, key: str, fresh: bool = True) -> BinaryIO:
        """Ranged GETs behind a seekable file (`fresh` changes nothing: every read comes from S3). Reading an
        archived object that is not restored raises OSError naming it."""
        object_key = self._key(key)
        head = self._head(object_key)
        if head is None:
            raise FileNotFoundError(errno.ENOENT, "no such datablock", self._url(object_key))
        return cast(BinaryIO, ObjectFile(self.s3, self.bucket, object_key, head["ContentLength"], head["ETag"]))

    def read_text(self, key: str) -> str:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read().decode()
        except ClientError as e:
            raise _os_error(e, self._url(self._key(key))) from e

    # --- locks, listing, records ---

    @contextlib.contextmanager
    def lock(
        self,
        key: str,
        wait_s: float,
        busy: Callable[[str], Exception],
        on_wait: Callable[[], None] | None = None,
        poll_s: float = 1.0,
    ) -> Iterator[None]:
        where = self._url(self._key(key))
        with lease_lock(self.s3, self.bucket, self._key(key), wait_s, lambda: busy(where), on_wait, poll_s):
            yield

    def datablock_names(self, folder: str) -> list[str]:
        """Objects in `folder`, and unfinished uploads as `<name>.partial`."""
        return sorted({entry.name for entry in self.entries(folder)} | set(self._unfinished(folder)))

    def is_folder(self, key: str) -> bool:
        """Whether anything is stored below `key/` (S3 has no empty folders; a marker left by SeaweedFS is none)."""
        prefix = self._key(key) + "/"
        return any(obj["Key"] != prefix for obj in iter_objects(self.s3, self.bucket, prefix))

    def entries(self, folder: str) -> list[StoredEntry]:
        prefix = self._key(folder) + "/"
        found: dict[str, StoredEntry] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix) :].rstrip("/")
                found[name] = StoredEntry(name, True, False, 0, _EPOCH)
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name:  # not the folder's own marker (`<folder>/`, which SeaweedFS lists once emptied)
                    found[name] = StoredEntry(name, False, False, obj["Size"], obj["LastModified"])
        return [found[name] for name in sorted(found)]

    def size(self, key: str) -> int:
        head = self._head(self._key(key))
        if head is not None:
            return head["ContentLength"]
        sizes = [obj["Size"] for obj in iter_objects(self.s3, self.bucket, self._key(key) + "/")]
        if not sizes:
            raise FileNotFoundError(errno.ENOENT, "nothing stored", self._url(self._key(key)))
        return sum(sizes)

    def write_text(self, key: str, text: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=text.encode())

    def set_aside(self, keys: list[str], folder: str) -> list[str]:
        """Copied into `folder` (each in its own storage class), then deleted. S3 copies an archived object only once
        restored: each is restored first (`wait_until_readable`; a datablock that just failed its verification is
        restored already). A name taken in `folder` is never replaced (FileExistsError; callers hold the
        dataset's lock, and each set-aside goes to a folder of its own). A crash between copy and delete leaves
        the datablock in both places; the next set-aside copies it to a new folder again."""
        moved: list[str] = []
        for key in keys:
            source = self._key(key)
            head = self._head(source)
            if head is None:
                continue
            new_key = f"{folder}/{PurePosixPath(key).name}"
            target = self._key(new_key)
            if self._head(target) is not None:
                raise FileExistsError(errno.EEXIST, "already set aside", self._url(target))
            self.wait_until_readable(key, self.restore.timeout_s)
            self.s3.copy(
                {"Bucket": self.bucket, "Key": source},
                self.bucket,
                target,
                ExtraArgs={"StorageClass": head.get("StorageClass", "STANDARD")},
            )
            self.s3.delete_object(Bucket=self.bucket, Key=source)
            moved.append(new_key)
        return moved

    def remove_folder(self, key: str, only_if_empty: bool = False) -> None:
        if only_if_empty and self.is_folder(key):
            raise OSError(errno.ENOTEMPTY, "folder not empty", self._url(self._key(key)))
        delete_prefix(self.s3, self.bucket, self._key(key) + "/")

    # --- names ---

    def _key(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ValueError(f"LTS key {key!r} is not a key inside the store")
        return "/".join(filter(None, [self.prefix.strip("/"), *parts]))

    def _url(self, object_key: str) -> str:
        return f"s3://{self.bucket}/{object_key}"

    def _head(self, object_key: str) -> dict | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as e:
            if error_code(e) in GONE_CODES:
                return None
            raise

    def _unfinished(self, folder: str) -> list[str]:
        prefix = self._key(folder) + "/"
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"][len(prefix) :] + PARTIAL_SUFFIX for page in pages for upload in page.get("Uploads", [])]

    def _abort_unfinished(self, folder: str) -> list[str]:
        names = self._unfinished(folder)
        if names:
            abort_multipart_uploads(self.s3, self.bucket, self._key(folder) + "/")
        return sorted(names)


_EPOCH = datetime.fromtimestamp(0, UTC)  # S3 dates no common prefix


def _os_error(error: ClientError, url: str) -> OSError:
    code = error_code(error)
    if code in GONE_CODES:
        return FileNotFoundError(errno.ENOENT, "no such object", url)
    return OSError(errno.EIO, f"{code}: {error.response.get('Error', {}).get('Message', '')}", url)


class ObjectFile(io.RawIOBase):
    """An S3 object as an unbuffered, seekable file: a seek reads nothing; reads stream one ranged GET from the
    position on, pinned to the version first seen (If-Match its ETag)."""

    def __init__(self, s3, bucket: str, key: str, size: int, etag: str):
        self._s3, self._bucket, self._key, self._size, self._etag = s3, bucket, key, size, etag
        self._position = 0
        self._body: Any = None
        self._body_position = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._position >= self._size or not len(view):
            return 0
        if self._body is None or self._body_position != self._position:
            self._open_body()
        data = self._body.read(len(view))
        view[: len(data)] = data
        self._position += len(data)
        self._body_position = self._position
        return len(data)

    def _open_body(self) -> None:
        self._close_body()
        try:
            response = self._s3.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._position}-", IfMatch=self._etag
            )
        except ClientError as e:
            raise _os_error(e, f"s3://{self._bucket}/{self._key}") from e
        self._body, self._body_position = response["Body"], self._position

    def _close_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()
