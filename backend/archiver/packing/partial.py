"""Partial retrieval: single files of a dataset, cut out of their datablocks into the retrieval bucket.

Only the datablocks holding a requested file are opened, and in each only the tar headers and the
requested members' bytes are read: the tar is walked header by header with seeks over the other
members. Each file becomes one object, checked against its registered checksum while it uploads;
a file that does not match is never completed, so no unverified object appears.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from archiver.packing import naming
from archiver.packing.checking import CHUNK
from archiver.packing.errors import FilesNotInDatasetError, IntegrityError
from archiver.packing.records import ChecksumAlgorithm, DatablockRecord, DataFileRecord, new_hasher
from archiver.packing.retrieve import RetrievedObject, checksum_metadata
from archiver.storage.lts_store import LtsStore
from archiver.storage.s3 import MultipartUpload


@dataclass(frozen=True)
class FileSelection:
    """The requested files of one datablock, with their records."""

    datablock: DatablockRecord
    files: list[DataFileRecord]


def select_files(pid: str, datablocks: Iterable[DatablockRecord], wanted: Iterable[str]) -> list[FileSelection]:
    """The datablocks holding the `wanted` paths (as SciCat's datablock file lists name them), in order;
    raises FilesNotInDatasetError naming every path no datablock holds."""
    wanted = list(dict.fromkeys(p.removeprefix("./") for p in wanted))
    found: dict[str, FileSelection] = {}
    held: set[str] = set()
    for datablock in datablocks:
        mine = [f for f in datablock.dataFileList if f.path in wanted and f.path not in held]
        if mine:
            found[datablock.archiveId] = FileSelection(datablock, mine)
            held.update(f.path for f in mine)
    missing = [p for p in wanted if p not in held]
    if missing:
        raise FilesNotInDatasetError(pid, missing)
    return list(found.values())


def retrieve_files(
    store: LtsStore,
    selection: FileSelection,
    s3,
    bucket: str,
    *,
    file_timeout_s: float,
    on_bytes: Callable[[int], None] | None = None,
    part_size: int = 8 * 1024 * 1024,
) -> list[RetrievedObject]:
    """Upload the selected members of one datablock, one object each (`naming.retrieved_file_key`).

    Raises IntegrityError when a member is missing, not a regular file, or differs in size or
    checksum from its record; the files of this datablock uploaded before stay (the caller
    removes the dataset's retrieval on failure)."""
    record = selection.datablock
    pid, archive_id = record.datasetId, record.archiveId
    what = f"partial retrieval from datablock {archive_id}"
    if not naming.archive_id_of_dataset(pid, archive_id):
        raise IntegrityError(what, [f"the datablock is not one of dataset {pid}: refused"])
    keys = {f.path: naming.retrieved_file_key(pid, f.path) for f in selection.files}  # refuses unsafe paths first
    store.wait_until_readable(naming.check_archive_id(archive_id), file_timeout_s)
    wanted = {f.path: f for f in selection.files}
    done: list[RetrievedObject] = []
    # Unbuffered: tarfile reads each header with one read() and seeks over the members not wanted,
    # so the members skipped are never read.
    with store.open_datablock(archive_id, fresh=False) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            file = wanted.pop(member.name, None)
            if file is None:
                continue
            problems = _member_problems(member, file)
            if problems:
                raise IntegrityError(what, problems)
            raw.seek(member.offset_data)
            _upload_checked(raw, file, record.chkAlg, s3, bucket, keys[file.path], what, on_bytes, part_size)
            done.append(RetrievedObject(keys[file.path], file.size, record.chkAlg, file.chk))
            if not wanted:
                break
    if wanted:
        raise IntegrityError(what, [f"missing member {p!r}" for p in wanted])
    return done


def _member_problems(member: tarfile.TarInfo, file: DataFileRecord) -> list[str]:
    if not member.isfile() or member.issparse():
        return [f"member {member.name!r} is of tar type {member.type!r}, not a regular file"]
    if member.size != file.size:
        return [f"member {member.name!r} is {member.size} bytes, recorded {file.size}"]
    return []


def _upload_checked(
    raw,
    file: DataFileRecord,
    algorithm: ChecksumAlgorithm,
    s3,
    bucket: str,
    key: str,
    what: str,
    on_bytes,
    part_size: int,
) -> None:
    hasher = new_hasher(algorithm)
    with MultipartUpload(
        s3, bucket, key, part_size, max_in_flight=2, metadata=checksum_metadata(algorithm, file.chk)
    ) as upload:
        left = file.size
        while left:
            data = raw.read(min(CHUNK, left))
            if not data:
                raise IntegrityError(what, [f"member {file.path!r} cut short: {file.size - left} of {file.size} bytes"])
            hasher.update(data)
            upload.write(data)
            left -= len(data)
            if on_bytes:
                on_bytes(len(data))
        if hasher.hexdigest() != file.chk:
            raise IntegrityError(
                what, [f"member {file.path!r} {algorithm} is {hasher.hexdigest()}, recorded {file.chk}"]
            )
        upload.complete()
