"""A lock held as an S3 object with a lease: the LTS store's locks where there is no `flock` (LTS_BACKEND "s3").

The lock object is created only where none exists (a conditional write, `If-None-Match: *`): one writer wins.
It names its holder and when its lease ends; the holder renews the lease in the background (a write
`If-Match` its own version, so a holder that lost the lock never takes it back) and deletes the object
(`If-Match` again) when it is done. A holder that dies stops renewing: once its lease ended, the next one
deletes the stale object, `If-Match` the version it read (two newcomers cannot both remove it and both win), and
creates its own. Leases run on the clocks of the holders' hosts: LEASE_S is far longer than their skew.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from botocore.exceptions import ClientError

from archiver.storage.s3 import error_code

LEASE_S = 120.0
LOST_WRITE_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
GONE_CODES = frozenset({"NoSuchKey", "404"})


def _lease(lease_s: float) -> bytes:
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return json.dumps({"holder": holder, "expires": time.time() + lease_s}).encode()


def _try_take(s3, bucket: str, key: str, lease_s: float) -> str | None:
    """The ETag of our new lock object, or None while a live holder has it. A stale one is removed first."""
    for _ in range(2):
        try:
            return s3.put_object(Bucket=bucket, Key=key, Body=_lease(lease_s), IfNoneMatch="*")["ETag"]
        except ClientError as e:
            if error_code(e) not in LOST_WRITE_CODES:
                raise
        try:
            held = s3.get_object(Bucket=bucket, Key=key)
            expires = json.loads(held["Body"].read()).get("expires", 0)
        except ClientError as e:
            if error_code(e) in GONE_CODES:
                continue  # released meanwhile: try again
            raise
        except ValueError:
            expires = 0  # unreadable: a holder died mid-write
        if expires > time.time():
            return None
        with contextlib.suppress(ClientError):  # someone else removed or renewed it first: try again
            s3.delete_object(Bucket=bucket, Key=key, IfMatch=held["ETag"])
    return None


class _Renewal(threading.Thread):
    def __init__(self, s3, bucket: str, key: str, etag: str, lease_s: float):
        super().__init__(name=f"lease {key}", daemon=True)
        self._s3, self._bucket, self._key, self.etag, self._lease_s = s3, bucket, key, etag, lease_s
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self._lease_s / 3):
            try:
                body = _lease(self._lease_s)
                self.etag = self._s3.put_object(Bucket=self._bucket, Key=self._key, Body=body, IfMatch=self.etag)[
                    "ETag"
                ]
            except ClientError as e:
                if error_code(e) in LOST_WRITE_CODES | GONE_CODES:
                    self.lost = True  # taken over after our lease ended: never written again
                    return
            except Exception:  # S3 unreachable for a moment: the lease holds until it ends, try again
                continue


@contextlib.contextmanager
def lease_lock(
    s3,
    bucket: str,
    key: str,
    wait_s: float,
    busy: Callable[[], Exception],
    on_wait: Callable[[], None] | None = None,
    poll_s: float = 1.0,
    lease_s: float = LEASE_S,
) -> Iterator[None]:
    """Hold the lock object `key` for the `with` block. While a live holder has it, waits up to `wait_s` (trying
    every `poll_s`, calling `on_wait` once), then raises `busy()`."""
    deadline = time.monotonic() + wait_s
    while (etag := _try_take(s3, bucket, key, lease_s)) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise busy()
        if on_wait:
            on_wait()
            on_wait = None
        time.sleep(min(poll_s, remaining))
    renewal = _Renewal(s3, bucket, key, etag, lease_s)
    renewal.start()
    try:
        yield
    finally:
        renewal.stopped.set()
        renewal.join()
        if not renewal.lost:
            with contextlib.suppress(ClientError):
                s3.delete_object(Bucket=bucket, Key=key, IfMatch=renewal.etag)
