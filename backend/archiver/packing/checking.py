"""Reading a datablock back and comparing it with its record: shared by verification and retrieval."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from archiver.packing.records import ChecksumAlgorithm, DataFileRecord, new_hasher

CHUNK = 1024 * 1024
# Reads of the tar file: large, so verification runs at the disk's sequential speed whatever the member size.
READ_SIZE = 8 * CHUNK


class BackgroundHasher:
    """A checksum computed on a helper thread, so two checksums of one stream use two cores.

    hashlib releases the GIL on large updates; at most `depth` chunks wait in memory."""

    def __init__(self, algorithm: ChecksumAlgorithm, depth: int = 2):
        self._hasher = new_hasher(algorithm)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hash")
        self._pending: list[Future] = []
        self._depth = depth

    def update(self, data: bytes) -> None:
        self._pending.append(self._pool.submit(self._hasher.update, data))
        while len(self._pending) > self._depth:
            self._pending.pop(0).result()

    def hexdigest(self) -> str:
        for future in self._pending:
            future.result()
        self._pending.clear()
        self._pool.shutdown()
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class TeeReader:
    """Reads a file front to back in large pieces, passing every piece to a checksum and to an optional
    consumer (an upload), and serves the tar reader's reads and forward seeks from the piece in memory."""

    def __init__(
        self,
        raw,
        algorithm: ChecksumAlgorithm,
        consumer: Callable[[bytes], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        read_size: int = READ_SIZE,
    ):
        self._raw = raw
        self.hasher = BackgroundHasher(algorithm)
        self._consumer = consumer
        self._on_bytes = on_bytes
        self._read_size = read_size
        self._piece, self._offset = b"", 0
        self.count = 0  # bytes read from the file

    def _next_piece(self) -> bool:
        self._piece, self._offset = self._raw.read(self._read_size), 0
        if not self._piece:
            return False
        self.hasher.update(self._piece)
        if self._consumer:
            self._consumer(self._piece)
        if self._on_bytes:
            self._on_bytes(len(self._piece))
        self.count += len(self._piece)
        return True

    def _take(self, size: int) -> bytes:
        """Up to `size` bytes of the current piece (the piece itself, uncopied, when it is all of it)."""
        if self._offset >= len(self._piece) and not self._next_piece():
            return b""
        if self._offset == 0 and size >= len(self._piece):
            self._offset = len(self._piece)
            return self._piece
        data = self._piece[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes unless the file ends first (tarfile takes a short read as a truncated tar)."""
        remaining = size if size >= 0 else None  # None: to the end
        parts = []
        while remaining != 0 and (data := self._take(self._read_size if remaining is None else remaining)):
            parts.append(data)
            if remaining is not None:
                remaining -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def feed(self, size: int, sink: Callable[[memoryview], None]) -> int:
        """Pass the next `size` bytes to `sink` as views of the pieces, uncopied; returns how many there were."""
        fed = 0
        while fed < size:
            if self._offset >= len(self._piece) and not self._next_piece():
                break
            n = min(size - fed, len(self._piece) - self._offset)
            sink(memoryview(self._piece)[self._offset : self._offset + n])
            self._offset += n
            fed += n
        return fed

    def tell(self) -> int:
        return self.count - (len(self._piece) - self._offset)

    def seek(self, position: int, whence: int = 0) -> int:
        if whence == 1:
            position += self.tell()
        if whence not in (0, 1) or position < self.tell():
            raise ValueError(
                f"the datablock is read front to back: cannot seek to {position} (whence {whence}) from {self.tell()}"
            )
        while self.tell() < position and self._take(position - self.tell()):
            pass
        return self.tell()

    def drain(self) -> None:
        while self._next_piece():
            pass


def check_datablock_stream(
    raw,
    files: list[DataFileRecord],
    algorithm: ChecksumAlgorithm,
    expected_chk: str | None,
    expected_size: int | None,
    consumer: Callable[[bytes], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[str]:
    """Read a tar stream to its end; return every difference from the recorded files (empty list: all good).

    Checks each member's size and checksum, missing, unexpected and duplicate
    members, and the checksum and size of the whole stream."""
    tee = TeeReader(raw, algorithm, consumer, on_bytes)
    expected = {f.path: f for f in files}
    seen: set[str] = set()
    problems: list[str] = []
    try:
        try:
            with tarfile.open(fileobj=tee, mode="r:") as tar:  # type: ignore[call-overload]  # TeeReader reads like a file
                for member in tar:
                    problems += _check_member(tee, member, expected, seen, algorithm)
        except (tarfile.TarError, EOFError, ValueError) as e:  # ValueError covers undecodable pax records
            problems.append(f"tar unreadable after {len(seen)} member(s): {e}")
        tee.drain()
        problems += [f"missing member {p!r}" for p in expected if p not in seen]
        chk = tee.hasher.hexdigest()
    finally:
        tee.hasher.close()
    if expected_size is not None and tee.count != expected_size:
        problems.append(f"datablock is {tee.count} bytes, recorded {expected_size}")
    if expected_chk is not None and chk != expected_chk:
        problems.append(f"datablock {algorithm} is {chk}, recorded {expected_chk}")
    return problems


def _check_member(tee: TeeReader, member, expected: dict[str, DataFileRecord], seen: set[str], algorithm) -> list[str]:
    """Check one member whose header `tarfile` has parsed; its bytes are hashed straight from the read pieces."""
    name = member.name
    if not member.isfile() or member.issparse():
        return [f"unexpected member {name!r} of tar type {member.type!r}"]
    if name in seen:
        return [f"duplicate member {name!r}"]
    hasher = new_hasher(algorithm)
    tee.seek(member.offset_data)
    size = tee.feed(member.size, hasher.update)
    if size < member.size:
        raise tarfile.ReadError(f"member {name!r} cut short after {size} bytes: unexpected end of data")
    seen.add(name)
    record = expected.get(name)
    if record is None:
        return [f"unexpected member {name!r} ({size} bytes)"]
    problems = []
    if size != record.size:
        problems.append(f"member {name!r} is {size} bytes, recorded {record.size}")
    if hasher.hexdigest() != record.chk:
        problems.append(f"member {name!r} {algorithm} is {hasher.hexdigest()}, recorded {record.chk}")
    return problems
