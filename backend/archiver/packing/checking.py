"""Reading a datablock back and comparing it with its record: shared by verification and retrieval."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from archiver.packing.records import ChecksumAlgorithm, DataFileRecord, new_hasher

CHUNK = 1024 * 1024


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
    """Reads a file, passing every byte read to a checksum and to an optional consumer (an upload)."""

    def __init__(self, raw, algorithm: ChecksumAlgorithm, consumer: Callable[[bytes], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None):
        self._raw = raw
        self.hasher = BackgroundHasher(algorithm)
        self._consumer = consumer
        self._on_bytes = on_bytes
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.hasher.update(data)
            if self._consumer:
                self._consumer(data)
            if self._on_bytes:
                self._on_bytes(len(data))
            self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def check_datablock_stream(
    raw, files: list[DataFileRecord], algorithm: ChecksumAlgorithm, expected_chk: str | None, expected_size: int | None,
    consumer: Callable[[bytes], None] | None = None, on_bytes: Callable[[int], None] | None = None,
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
            with tarfile.open(fileobj=tee, mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    problems += _check_member(tar, member, expected, seen, algorithm)
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


def _check_member(tar, member, expected: dict[str, DataFileRecord], seen: set[str], algorithm) -> list[str]:
    name = member.name
    if not member.isfile():
        return [f"unexpected member {name!r} of tar type {member.type!r}"]
    if name in seen:
        return [f"duplicate member {name!r}"]
    hasher = new_hasher(algorithm)
    size = 0
    reader = tar.extractfile(member)
    try:
        while chunk := reader.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    except tarfile.TarError as e:
        raise tarfile.ReadError(f"member {name!r} cut short after {size} bytes: {e}") from e
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
