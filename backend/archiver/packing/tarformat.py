"""The tar layout of a datablock (POSIX pax, uncompressed), written by hand so it streams.

Writing: `member_header` + the file's bytes + `padding` for each member, then
`end_of_archive`. The header comes from the standard library's TarInfo, so long
names and members over 8 GiB get pax records. Reading back parses the headers with
`tarfile`, an independent check of what we wrote.
"""

from __future__ import annotations

import stat
import tarfile

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
MEMBER_MODE = 0o644
MEMBER_UID = 0
MEMBER_GID = 0


def member_header(path: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size = size
    info.mtime = int(mtime)
    info.mode = MEMBER_MODE
    info.uid, info.gid = MEMBER_UID, MEMBER_GID
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def end_of_archive(written: int) -> bytes:
    """Two zero blocks, then zeros up to a full record, as tar readers expect."""
    total = written + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-total % RECORD))


def member_packed_size(path: str, size: int, mtime: int) -> int:
    return len(member_header(path, size, mtime)) + size + (-size % BLOCK)


def archive_size(member_sizes: list[int]) -> int:
    written = sum(member_sizes)
    return written + len(end_of_archive(written))


def member_perm() -> str:
    return stat.filemode(stat.S_IFREG | MEMBER_MODE)
