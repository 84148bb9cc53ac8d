"""Archive one datablock: landing-zone objects -> one pax tar on the LTS, checksums in the same pass.

The LTS store (`storage/lts_store.py`) publishes the tar once it is complete, its manifest first; a
datablock's name is never taken again. The manifest records what was written; `verify_datablock` checks the
stored tar against it as the store verifies (read back, or the checksum a cold store keeps), `reread_datablock`
reads it back on any store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import BinaryIO

from pydantic import ValidationError

from archiver.packing import naming, tarformat
from archiver.packing.checking import CHUNK, BackgroundHasher, check_datablock_stream
from archiver.packing.errors import ChecksumMismatchError, DatablockExistsError, IntegrityError
from archiver.packing.planning import PlannedDatablock
from archiver.packing.records import (
    ChecksumAlgorithm,
    DatablockRecord,
    DataFileRecord,
    ListedChecksum,
    Manifest,
    parse_manifest,
)
from archiver.packing.sources import Member, Prefetch, read_members
from archiver.storage.lts import AlreadyPublishedError, problems_read_back
from archiver.storage.lts_store import LtsStore


@dataclass(frozen=True)
class DatablocksOnLts:
    manifests: list[Manifest]  # datablocks with a readable manifest of this dataset beside their tar
    taken_indices: set[int]  # indices of every datablock file in the folder, readable or not


def datablocks_on_lts(store: LtsStore, pid: str) -> DatablocksOnLts:
    """What the dataset's datablocks folder holds. Call it holding the dataset's lock (no `.partial` left)."""
    folder = naming.datablocks_key(pid)
    manifests, taken = [], set()
    for name in store.datablock_names(folder):
        index = naming.datablock_index(pid, name)
        if index is None:
            continue
        taken.add(index)
        if not name.endswith(naming.TAR_SUFFIX):
            continue
        try:
            manifest = parse_manifest(store.read_text(naming.manifest_id(f"{folder}/{name}")))
        except (OSError, ValueError, ValidationError):
            continue
        if manifest.datasetId == pid and manifest.archiveId == naming.archive_id(pid, index):
            manifests.append(manifest)
    return DatablocksOnLts(manifests, taken)


def archive_datablock(
    s3,
    bucket: str,
    block: PlannedDatablock,
    store: LtsStore,
    algorithm: ChecksumAlgorithm = "sha256",
    on_bytes: Callable[[int], None] | None = None,
    prefetch: Prefetch = Prefetch(),
    listed: Mapping[str, ListedChecksum] | None = None,
) -> DatablockRecord:
    """Write `block` as a new datablock on the LTS and return its SciCat record (the store publishes it, with
    its manifest, once written).

    The LTS is written once: DatablockExistsError when a file already has the datablock's name (plans reuse
    existing datablocks and give new ones free names). A file with a checksum in `listed` (by path) must have
    it: ChecksumMismatchError, naming each that does not, and nothing is published. Raises MissingFilesError
    when a landing-zone object is gone or unreadable (user error), IntegrityError when an object changed size
    while being read, other errors for storage problems."""
    listed = listed or {}
    manifests: list[Manifest] = []

    def manifest(tar: tuple[str, int, list[DataFileRecord]], stored_checksum: str | None) -> str:
        chk, packed_size, members = tar
        manifests.append(
            Manifest(
                datasetId=block.pid,
                archiveId=block.archive_id,
                size=block.size,
                packedSize=packed_size,
                chkAlg=algorithm,
                dataFileList=members,
                chk=chk,
                created=datetime.now(UTC).isoformat(),
                storedChecksum=stored_checksum,
            )
        )
        return manifests[0].to_json()

    try:
        store.publish_datablock(
            block.archive_id,
            naming.manifest_id(block.archive_id),
            lambda out: _write_tar(out, s3, bucket, block, algorithm, on_bytes, prefetch, listed),
            manifest,
        )
    except AlreadyPublishedError:
        raise DatablockExistsError(
            f"datablock {block.archive_id} is already on the LTS; it is never overwritten (a bug in planning: "
            "report it; the datablock stays as it is)"
        ) from None
    except FileExistsError as e:
        raise DatablockExistsError(
            f"datablock {block.archive_id}: {e.filename} appeared while it was written; nothing was overwritten"
        ) from e
    return manifests[0].record()


class _TarOutput:
    """Writes the tar and its checksum; small pieces (headers, padding, small members) are gathered
    into CHUNK-sized writes so neither the file nor the checksum thread sees thousands of tiny ones."""

    def __init__(self, out, algorithm: ChecksumAlgorithm):
        self._out = out
        self.hash = BackgroundHasher(algorithm)
        self._gathered = bytearray()
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if len(data) >= CHUNK:
            self.flush()
            self._emit(data)
            return
        self._gathered += data
        if len(self._gathered) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._gathered:
            gathered, self._gathered = self._gathered, bytearray()
            self._emit(gathered)

    def _emit(self, data) -> None:
        self._out.write(data)
        self.hash.update(data)  # the checksum thread owns `data` from here: it is never written to again


def _write_tar(
    out,
    s3,
    bucket: str,
    block: PlannedDatablock,
    algorithm: ChecksumAlgorithm,
    on_bytes,
    prefetch: Prefetch,
    listed: Mapping[str, ListedChecksum],
):
    tar = _TarOutput(out, algorithm)
    members, mismatches = [], []
    extra = {path: c.algorithm for path, c in listed.items() if c.algorithm != algorithm}
    try:
        with contextlib.closing(
            read_members(s3, bucket, block.pid, block.files, algorithm, prefetch, extra)
        ) as contents:
            for member in contents:
                f = member.file
                tar.write(tarformat.member_header(f.path, f.size, int(f.modified.timestamp())))
                for chunk in member.chunks:
                    tar.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                tar.write(tarformat.padding(f.size))
                members.append(
                    DataFileRecord(
                        path=f.path,
                        size=f.size,
                        time=f.modified.astimezone(UTC).isoformat(),
                        chk=member.checksum(),
                        uid=str(tarformat.MEMBER_UID),
                        gid=str(tarformat.MEMBER_GID),
                        perm=tarformat.member_perm(),
                    )
                )
                mismatch = _checksum_mismatch(member, listed.get(f.path), algorithm)
                if mismatch:
                    mismatches.append(mismatch)
        if mismatches:
            raise ChecksumMismatchError(block.pid, mismatches)
        tar.write(tarformat.end_of_archive(tar.written))
        tar.flush()
        return tar.hash.hexdigest(), tar.written, members
    finally:
        tar.hash.close()


def _checksum_mismatch(member: Member, expected: ListedChecksum | None, algorithm: str) -> str | None:
    """How the file read differs from the checksum SciCat lists for it (None: it does not, or none is listed)."""
    if expected is None:
        return None
    computed = member.checksum() if expected.algorithm == algorithm else member.extra_checksum()
    if computed is None or not expected.contradicts(expected.algorithm, computed):
        return None
    return f"{member.file.path} (SciCat lists {expected.algorithm} {expected.value}, the landing zone has {computed})"


def verify_datablock(
    store: LtsStore,
    archive_id: str,
    on_bytes: Callable[[int], None] | None = None,
    file_timeout_s: float | None = None,
    manifest: Manifest | None = None,
) -> Manifest:
    """Check the datablock as the store verifies (`LtsStore.verify_datablock`) against its manifest: the POSIX
    store reads it back once (from storage, not the page cache, where the OS allows; after waiting up to
    `file_timeout_s` until readable, when given), checking the datablock checksum and every member; the s3
    store compares the size and checksum S3 keeps, restoring nothing. Raises IntegrityError listing every
    problem. `on_bytes` counts the bytes verified. `manifest`: the datablock's, when read already."""
    manifest = manifest or manifest_of(store, archive_id)
    was_read = False

    def check(raw: BinaryIO) -> list[str]:
        nonlocal was_read
        was_read = True
        return _check_bytes(raw, manifest, on_bytes)

    problems = store.verify_datablock(archive_id, manifest.packedSize, manifest.storedChecksum, check, file_timeout_s)
    if problems:
        raise IntegrityError(f"datablock {archive_id}", problems)
    if on_bytes and not was_read:
        on_bytes(manifest.packedSize)
    return manifest


def reread_datablock(
    store: LtsStore, archive_id: str, file_timeout_s: float, on_bytes: Callable[[int], None] | None = None
) -> Manifest:
    """Read the datablock back whatever the store (a cold one restores it first, waiting up to its deadline) and
    check the datablock checksum and every member against the manifest: the audit's re-reads. Raises
    IntegrityError listing every problem."""
    manifest = manifest_of(store, archive_id)
    problems = problems_read_back(store, archive_id, lambda raw: _check_bytes(raw, manifest, on_bytes), file_timeout_s)
    if problems:
        raise IntegrityError(f"datablock {archive_id}", problems)
    return manifest


def manifest_of(store: LtsStore, archive_id: str) -> Manifest:
    """The datablock's manifest; IntegrityError when it is unreadable or no manifest."""
    manifest_id = naming.manifest_id(naming.check_archive_id(archive_id))
    try:
        return parse_manifest(store.read_text(manifest_id))
    except (OSError, ValueError, ValidationError) as e:
        raise IntegrityError(
            f"datablock {archive_id}", [f"manifest {PurePosixPath(manifest_id).name} unreadable: {e}"]
        ) from e


def _check_bytes(raw: BinaryIO, manifest: Manifest, on_bytes: Callable[[int], None] | None) -> list[str]:
    return check_datablock_stream(
        raw, manifest.dataFileList, manifest.chkAlg, manifest.chk, manifest.packedSize, on_bytes=on_bytes
    )
