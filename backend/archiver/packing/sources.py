"""The landing-zone objects of a datablock, in the planned order, read for the tar writer.

One GET at a time leaves the writer waiting on request latency when files are small, so
objects of up to `small_object_bytes` are fetched whole (and checksummed) on a few threads
ahead of the writer, at most `budget_bytes` of them at once; a larger object is streamed
in its turn with one GET. Memory stays under the budget plus one read chunk, whatever the
size or number of files.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import ClientError

from archiver.packing.checking import CHUNK
from archiver.packing.errors import IntegrityError, MissingFilesError
from archiver.packing.planning import SourceFile
from archiver.packing.records import ChecksumAlgorithm, new_hasher
from archiver.storage.s3 import ObjectReader, error_code

MiB = 1024 * 1024
MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound", "AccessDenied", "403", "InvalidObjectState"}


@dataclass(frozen=True)
class Prefetch:
    """`threads` fetch threads for objects of up to `small_object_bytes`, at most `budget_bytes` of them
    fetched or held ahead of the writer (the one being written included)."""

    threads: int = 8
    budget_bytes: int = 32 * MiB
    small_object_bytes: int = 4 * MiB

    def __post_init__(self):
        if self.threads < 1 or not 0 < self.small_object_bytes <= self.budget_bytes:
            raise ValueError(f"{self}: needs threads >= 1 and 0 < small_object_bytes <= budget_bytes")


@dataclass(frozen=True)
class Member:
    file: SourceFile
    chunks: Iterable[bytes]
    checksum: Callable[[], str]  # the member's checksum, once `chunks` is read to its end
    extra_checksum: Callable[[], str | None]  # in the file's extra algorithm, if it has one


class _Hashers:
    """The datablock's checksum of a file and, where SciCat lists one in another algorithm, that one too."""

    def __init__(self, algorithm: ChecksumAlgorithm, extra: str | None):
        self.main = new_hasher(algorithm)
        self.extra = hashlib.new(extra) if extra else None

    def update(self, data: bytes) -> None:
        self.main.update(data)
        if self.extra:
            self.extra.update(data)

    def extra_hexdigest(self) -> str | None:
        return self.extra.hexdigest() if self.extra else None


def read_members(
    s3,
    bucket: str,
    pid: str,
    files: Iterable[SourceFile],
    algorithm: ChecksumAlgorithm,
    prefetch: Prefetch = Prefetch(),
    extra_algorithms: Mapping[str, str] | None = None,
) -> Generator[Member]:
    """Yield each file's contents in order; read each member's chunks to the end before the next.
    Files named in `extra_algorithms` (path -> hashlib name) are checksummed in that algorithm too.
    Use it in `contextlib.closing`, so fetches still queued stop when the caller stops early.
    An error of any fetch is raised when its file's turn comes."""
    extra_algorithms = extra_algorithms or {}
    pool = ThreadPoolExecutor(prefetch.threads, thread_name_prefix="s3-get")
    ahead: deque[tuple[SourceFile, Future | None]] = deque()  # None: streamed in its turn
    held = 0  # bytes of the small objects in `ahead` and of the one being written
    upcoming = iter(files)
    following = next(upcoming, None)
    try:
        while True:
            while following is not None:
                if following.size > prefetch.small_object_bytes:
                    ahead.append((following, None))
                elif held + following.size <= prefetch.budget_bytes:
                    ahead.append(
                        (
                            following,
                            pool.submit(
                                _fetch_whole,
                                s3,
                                bucket,
                                pid,
                                following,
                                _Hashers(algorithm, extra_algorithms.get(following.path)),
                            ),
                        )
                    )
                    held += following.size
                else:
                    break
                following = next(upcoming, None)
            if not ahead:
                return
            f, fetch = ahead.popleft()
            if fetch is None:
                hashers = _Hashers(algorithm, extra_algorithms.get(f.path))
                yield Member(
                    f,
                    _hashed(object_chunks(s3, bucket, pid, f), hashers),
                    hashers.main.hexdigest,
                    hashers.extra_hexdigest,
                )
            else:
                data, hashers = fetch.result()
                yield Member(f, (data,), hashers.main.hexdigest, hashers.extra_hexdigest)
                held -= f.size
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fetch_whole(s3, bucket: str, pid: str, f: SourceFile, hashers: _Hashers) -> tuple[bytes, _Hashers]:
    data = b"".join(object_chunks(s3, bucket, pid, f))
    hashers.update(data)
    return data, hashers


def _hashed(chunks: Iterator[bytes], hasher: _Hashers) -> Iterator[bytes]:
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk


def object_chunks(s3, bucket: str, pid: str, f: SourceFile) -> Iterator[bytes]:
    """Stream one object; raises MissingFilesError when it is gone or unreadable, IntegrityError when its
    size is not the listed one (it changed since the dataset was planned)."""
    try:
        reader = ObjectReader(s3, bucket, f.key)
    except ClientError as e:
        if error_code(e) in MISSING_OBJECT_CODES:
            raise MissingFilesError(
                pid, [f.path], detail=f"missing or unreadable in the landing zone ({error_code(e)})"
            ) from e
        raise
    with contextlib.closing(reader):
        while chunk := reader.read(CHUNK):
            if reader.position > f.size:
                break
            yield chunk
    if reader.position != f.size:
        raise IntegrityError(
            f"dataset {pid}",
            [
                f"landing-zone object {f.key!r} changed while being archived: "
                f"listed {f.size} bytes, read {reader.position}"
            ],
        )
