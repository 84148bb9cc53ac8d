"""Archive one datablock: landing-zone objects -> one pax tar on the LTS, checksums in the same pass.

The tar is written under a temporary name (`.partial`), fsynced and renamed,
so a file under a final name is always complete; a final name is never replaced. The manifest beside it
records what was written; `verify_datablock` reads the tar back against it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from archiver.errors import TryLaterError
from archiver.packing import naming, tarformat
from archiver.packing.checking import CHUNK, BackgroundHasher, check_datablock_stream
from archiver.packing.cleanup import remove_partial_files
from archiver.packing.errors import ChecksumMismatchError, DatablockExistsError, IntegrityError
from archiver.packing.planning import PlannedDatablock
from archiver.packing.records import (
    ChecksumAlgorithm,
    DatablockRecord,
    DataFileRecord,
    ListedChecksum,
    Manifest,
    read_manifest,
)
from archiver.packing.sources import Member, Prefetch, read_members
from archiver.storage.lts import FileOwnership, drop_page_cache, fsync_dir, rename_no_replace, write_json_durably

LOCK_FILE_NAME = ".archiving.lock"


class DatasetBusyError(TryLaterError):
    """Another live process is writing this dataset's datablocks."""


@contextlib.contextmanager
def claim_datablocks_folder(
    lts_root: Path,
    pid: str,
    wait_s: float = 0.0,
    on_wait: Callable[[Path], None] | None = None,
) -> Iterator[list[Path]]:
    """Hold the dataset's write lock while its datablocks are written; yields the leftover `.partial`
    files of dead runs, removed on entry.

    The lock is an exclusive `flock` on `{dataset}/.archiving.lock`, held for the whole `with` block.
    The kernel drops it when its holder dies, so whoever gets it knows no live writer is left and
    every `.partial` file is a dead run's. While another process holds it, waits up to `wait_s` (a
    frozen run that wakes up gives it back once it sees it no longer owns its job), calling `on_wait`
    once; then raises DatasetBusyError."""
    folder = naming.datablocks_folder(lts_root, pid)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / LOCK_FILE_NAME
    deadline = time.monotonic() + wait_s
    with open(lock_path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatasetBusyError(
                        f"dataset {pid}: another process is writing its datablocks (it holds {lock_path}"
                        + (f" and kept it for {wait_s:.0f} s" if wait_s else "")
                        + "); wait for that run to end before archiving the dataset again"
                    ) from None
                if on_wait:
                    on_wait(lock_path)
                    on_wait = None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        try:
            yield remove_partial_files(lts_root, pid)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class DatablocksOnLts:
    manifests: list[Manifest]  # datablocks with a readable manifest of this dataset beside their tar
    taken_indices: set[int]  # indices of every datablock file in the folder, readable or not


def datablocks_on_lts(lts_root: Path, pid: str) -> DatablocksOnLts:
    """What the dataset's datablocks folder holds. Call it holding the dataset's lock (no `.partial` left)."""
    folder = naming.datablocks_folder(lts_root, pid)
    manifests, taken = [], set()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        index = naming.datablock_index(pid, path.name)
        if index is None:
            continue
        taken.add(index)
        if not path.name.endswith(naming.TAR_SUFFIX):
            continue
        try:
            manifest = read_manifest(naming.manifest_path(path))
        except (OSError, ValueError, ValidationError):
            continue
        if manifest.datasetId == pid and manifest.archiveId == naming.archive_id(pid, index):
            manifests.append(manifest)
    return DatablocksOnLts(manifests, taken)


def archive_datablock(
    s3,
    bucket: str,
    block: PlannedDatablock,
    lts_root: Path,
    algorithm: ChecksumAlgorithm = "sha256",
    on_bytes: Callable[[int], None] | None = None,
    prefetch: Prefetch = Prefetch(),
    listed: Mapping[str, ListedChecksum] | None = None,
    ownership: FileOwnership = FileOwnership(),
) -> DatablockRecord:
    """Write `block` as a new datablock on the LTS and return its SciCat record. The tar and its manifest get
    `ownership` before they are published.

    The LTS is written once: DatablockExistsError when a file already has the datablock's name (plans reuse
    existing datablocks and give new ones free names). A file with a checksum in `listed` (by path) must have
    it: ChecksumMismatchError, naming each that does not, and nothing is published. Raises MissingFilesError
    when a landing-zone object is gone or unreadable (user error), IntegrityError when an object changed size
    while being read, other errors for storage problems."""
    tar_path = naming.datablock_path(lts_root, block.archive_id)
    manifest_file = naming.manifest_path(tar_path)
    folder = tar_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if tar_path.exists() or manifest_file.exists():
        raise DatablockExistsError(
            f"datablock {block.archive_id} is already on the LTS; it is never overwritten (a bug in planning: "
            "report it; the datablock stays as it is)"
        )
    listed = listed or {}
    partial = naming.partial_path(tar_path)
    try:
        with open(partial, "wb") as out:  # truncates a leftover from an earlier crash
            chk, packed_size, members = _write_tar(out, s3, bucket, block, algorithm, on_bytes, prefetch, listed)
            out.flush()
            ownership.apply(out.fileno(), tar_path)
            os.fsync(out.fileno())
            drop_page_cache(out.fileno())
        manifest = Manifest(
            datasetId=block.pid,
            archiveId=block.archive_id,
            size=block.size,
            packedSize=packed_size,
            chkAlg=algorithm,
            dataFileList=members,
            chk=chk,
            created=datetime.now(UTC).isoformat(),
        )
        # Manifest first: a crash between the two renames leaves a manifest without a tar (a taken name,
        # never reused), never a verified tar with a stale manifest.
        write_json_durably(
            manifest_file,
            manifest.model_dump_json(indent=1),
            naming.partial_path(manifest_file),
            rename=rename_no_replace,
            before_sync=lambda fd: ownership.apply(fd, manifest_file),
        )
        rename_no_replace(partial, tar_path)
        fsync_dir(folder)
    except FileExistsError as e:
        raise DatablockExistsError(
            f"datablock {block.archive_id}: {e.filename} appeared while it was written; nothing was overwritten"
        ) from e
    finally:
        for leftover in (partial, naming.partial_path(manifest_file)):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return manifest.record()


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


def verify_datablock(lts_root: Path, archive_id: str, on_bytes: Callable[[int], None] | None = None) -> Manifest:
    """Read the datablock back once (from storage, not the page cache, where the OS allows) and check the
    datablock checksum and every member against the manifest. Raises IntegrityError listing every problem."""
    tar_path = naming.datablock_path(lts_root, archive_id)
    what = f"datablock {archive_id}"
    try:
        manifest = read_manifest(naming.manifest_path(tar_path))
    except (OSError, ValueError, ValidationError) as e:
        raise IntegrityError(what, [f"manifest {naming.manifest_path(tar_path).name} unreadable: {e}"]) from e
    try:
        raw = open(tar_path, "rb", buffering=0)  # noqa: SIM115 (closed by the `with` below)
    except OSError as e:
        raise IntegrityError(what, [f"tar file unreadable: {e}"]) from e
    with raw:
        drop_page_cache(raw.fileno())
        problems = check_datablock_stream(
            raw,
            manifest.dataFileList,
            manifest.chkAlg,
            manifest.chk,
            manifest.packedSize,
            on_bytes=on_bytes,
        )
    if problems:
        raise IntegrityError(what, problems)
    return manifest
