"""The landing-zone objects of a datablock, in the planned order, read for the tar writer.

One GET at a time leaves the writer waiting on request latency, so objects are fetched
ahead of it on a few threads, in pieces: an object of up to `piece_bytes` whole (and
checksummed on the fetch thread), a larger one as ranged GETs of `piece_bytes`. At most
`budget_bytes` of pieces are fetched or held ahead of the writer, so memory is bounded by
the budget, whatever the size or number of files.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from archiver.packing.errors import IntegrityError, MissingFilesError
from archiver.packing.planning import SourceFile
from archiver.packing.records import ChecksumAlgorithm, new_hasher
from archiver.storage.s3 import error_code

MiB = 1024 * 1024
MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound", "AccessDenied", "403", "InvalidObjectState"}
READ_ATTEMPTS = 3  # a connection lost while a piece's body is read: GET the piece again


@dataclass(frozen=True)
class Prefetch:
    """`threads` fetch threads, pieces of `piece_bytes`, at most `budget_bytes` of pieces ahead of the
    writer (the piece being written included)."""

    threads: int = 8
    budget_bytes: int = 32 * MiB
    piece_bytes: int = 8 * MiB

    def __post_init__(self):
        if self.threads < 1 or not 0 < self.piece_bytes <= self.budget_bytes:
            raise ValueError(f"{self}: needs threads >= 1 and 0 < piece_bytes <= budget_bytes")


@dataclass(frozen=True)
class Member:
    file: SourceFile
    chunks: Iterable[bytes]
    checksum: Callable[[], str]  # the member's checksum, once `chunks` is read to its end


@dataclass(frozen=True)
class _Piece:
    file: SourceFile
    start: int
    length: int

    @property
    def whole(self) -> bool:
        return self.length == self.file.size


@dataclass(frozen=True)
class _Fetched:
    data: bytes
    etag: str
    checksum: str | None  # of a whole object only


def read_members(
    s3, bucket: str, pid: str, files: Iterable[SourceFile], algorithm: ChecksumAlgorithm,
    prefetch: Prefetch = Prefetch(),
) -> Iterator[Member]:
    """Yield each file's contents in order; read each member's chunks to the end before the next.
    Use it in `contextlib.closing`, so fetches still queued stop when the caller stops early.
    An error of any fetch is raised when its piece's turn comes."""
    files = list(files)
    fetcher = _Fetcher(s3, bucket, pid, _pieces(files, prefetch.piece_bytes), algorithm, prefetch)
    try:
        for f in files:
            if f.size <= prefetch.piece_bytes:
                fetched = fetcher.next(f)
                yield Member(f, (fetched.data,), lambda checksum=fetched.checksum: checksum)
            else:
                hasher = new_hasher(algorithm)
                yield Member(f, _ranged_chunks(fetcher, pid, f, hasher), hasher.hexdigest)
    finally:
        fetcher.close()


def _pieces(files: list[SourceFile], piece_bytes: int) -> Iterator[_Piece]:
    for f in files:
        if f.size <= piece_bytes:
            yield _Piece(f, 0, f.size)
        else:
            for start in range(0, f.size, piece_bytes):
                yield _Piece(f, start, min(piece_bytes, f.size - start))


def _ranged_chunks(fetcher: _Fetcher, pid: str, f: SourceFile, hasher) -> Iterator[bytes]:
    first_etag = None
    for _ in range(0, f.size, fetcher.piece_bytes):
        fetched = fetcher.next(f)
        first_etag = first_etag or fetched.etag
        if fetched.etag != first_etag:
            raise _changed(pid, f, f"its ETag went from {first_etag} to {fetched.etag}")
        hasher.update(fetched.data)
        yield fetched.data


class _Fetcher:
    """Keeps pieces fetching ahead, in order, within the byte budget."""

    def __init__(self, s3, bucket: str, pid: str, pieces: Iterator[_Piece], algorithm: ChecksumAlgorithm,
                 prefetch: Prefetch):
        self._fetch = lambda piece: _fetch_piece(s3, bucket, pid, piece, algorithm)
        self._pool = ThreadPoolExecutor(prefetch.threads, thread_name_prefix="s3-get")
        self._budget = prefetch.budget_bytes
        self.piece_bytes = prefetch.piece_bytes
        self._pieces = pieces
        self._following = next(pieces, None)
        self._ahead: deque[tuple[_Piece, Future]] = deque()
        self._held = 0  # bytes of the pieces in `_ahead` and of the one the writer holds
        self._in_hand = 0

    def next(self, f: SourceFile) -> _Fetched:
        """The next piece, which must be of `f`; the writer is done with the one before."""
        self._held -= self._in_hand
        self._top_up()
        piece, future = self._ahead.popleft()
        if piece.file != f:
            raise RuntimeError(f"read_members: asked for a piece of {f.path}, the next is of {piece.file.path}")
        self._in_hand = piece.length
        return future.result()

    def _top_up(self) -> None:
        while self._following is not None:
            piece = self._following
            if self._ahead and self._held + piece.length > self._budget:
                return
            self._ahead.append((piece, self._pool.submit(self._fetch, piece)))
            self._held += piece.length
            self._following = next(self._pieces, None)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _fetch_piece(s3, bucket: str, pid: str, piece: _Piece, algorithm: ChecksumAlgorithm) -> _Fetched:
    attempts_left = READ_ATTEMPTS
    while True:
        response = _get_piece(s3, bucket, pid, piece)
        try:
            data = response["Body"].read()
            break
        except (BotoCoreError, OSError):
            attempts_left -= 1
            if not attempts_left:
                raise
    if len(data) != piece.length:
        raise _changed(pid, piece.file, f"a piece of {piece.length} bytes read as {len(data)}")
    checksum = None
    if piece.whole:
        hasher = new_hasher(algorithm)
        hasher.update(data)
        checksum = hasher.hexdigest()
    return _Fetched(data, response["ETag"], checksum)


def _get_piece(s3, bucket: str, pid: str, piece: _Piece) -> dict:
    f = piece.file
    ranged = {} if piece.whole else {"Range": f"bytes={piece.start}-{piece.start + piece.length - 1}"}
    try:
        response = s3.get_object(Bucket=bucket, Key=f.key, **ranged)
    except ClientError as e:
        code = error_code(e)
        if code in MISSING_OBJECT_CODES:
            raise MissingFilesError(pid, [f.path], detail=f"missing or unreadable in the landing zone ({code})") from e
        if code == "InvalidRange":
            raise _changed(pid, f, "it is shorter now") from e
        raise
    size = int(response["ContentRange"].rsplit("/", 1)[1]) if ranged else response["ContentLength"]
    if size != f.size:
        response["Body"].close()
        raise _changed(pid, f, f"it is {size} bytes now")
    return response


def _changed(pid: str, f: SourceFile, how: str) -> IntegrityError:
    return IntegrityError(
        f"dataset {pid}", [f"landing-zone object {f.key!r} changed while being archived: listed {f.size} bytes, {how}"],
    )
