"""What goes into which datablock: the dataset's landing-zone files, in a stable order, split by size.

The LTS is written once: a datablock already on it that holds exactly some of the landing-zone files is
reused as it is, and new datablocks take indices no file on the LTS uses, so no plan ever names a
datablock that exists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from archiver.packing import naming, tarformat
from archiver.packing.errors import (
    ConflictingListingError,
    EmptyDatasetError,
    InvalidNameError,
    MissingFilesError,
    UnsafeFileNamesError,
)
from archiver.packing.records import DataFileRecord, ListedChecksum, Manifest
from archiver.storage.s3 import iter_objects


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the dataset's landing prefix; the tar member name and SciCat DataFile path
    key: str  # full key in the landing-zone bucket
    size: int
    modified: datetime

    @property
    def packed_size(self) -> int:
        return tarformat.member_packed_size(self.path, self.size, int(self.modified.timestamp()))


@dataclass(frozen=True)
class ListedFile:
    """A file the dataset's origdatablocks list in SciCat."""

    path: str  # relative to the dataset, without a leading "./"
    size: int
    checksum: ListedChecksum | None = None  # None: listed without a checksum we can compute


def listed_by_path(pid: str, listed: Iterable[ListedFile]) -> dict[str, ListedFile]:
    """The listed files by path. A path listed twice (two origdatablocks) must say the same both times:
    raises ConflictingListingError naming each path listed with different sizes or checksums."""
    by_path: dict[str, ListedFile] = {}
    conflicts = []
    for f in listed:
        seen = by_path.setdefault(f.path, f)
        if seen.size != f.size or (
            seen.checksum and f.checksum and seen.checksum.contradicts(f.checksum.algorithm, f.checksum.value)
        ):
            conflicts.append(f"{f.path} ({_described(seen)} and {_described(f)})")
        elif seen.checksum is None and f.checksum is not None:
            by_path[f.path] = f
    if conflicts:
        raise ConflictingListingError(pid, conflicts)
    return by_path


def _described(f: ListedFile) -> str:
    return f"{f.size} bytes" + (f", {f.checksum.algorithm} {f.checksum.value}" if f.checksum else "")


@dataclass(frozen=True)
class PlannedDatablock:
    pid: str
    index: int
    files: tuple[SourceFile, ...]

    @property
    def archive_id(self) -> str:
        return naming.archive_id(self.pid, self.index)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def packed_size(self) -> int:
        return tarformat.archive_size([f.packed_size for f in self.files])


def list_dataset_files(s3, bucket: str, pid: str) -> list[SourceFile]:
    """Every file below the dataset's landing prefix, sorted by path. Folder markers (`.../`) are skipped."""
    prefix = naming.landing_prefix(pid)
    files, unsafe = [], []
    for obj in iter_objects(s3, bucket, prefix):
        path = obj["Key"][len(prefix) :]
        if path.endswith("/") and obj["Size"] == 0:
            continue
        try:
            naming.check_relative_path(path)
        except InvalidNameError:
            unsafe.append(path)
            continue
        files.append(SourceFile(path, obj["Key"], obj["Size"], obj["LastModified"]))
    if unsafe:
        raise UnsafeFileNamesError(pid, unsafe)
    if not files:
        raise EmptyDatasetError(pid, prefix, bucket)
    return sorted(files, key=lambda f: f.path)


def plan_datablocks(
    pid: str,
    files: Iterable[SourceFile],
    target_size_bytes: int,
    taken_indices: Iterable[int] = (),
) -> list[PlannedDatablock]:
    """Consecutive runs of files whose tar stays within `target_size_bytes`; a bigger file gets its own datablock.
    Indices start after the highest of `taken_indices` (datablocks already on the LTS)."""
    if target_size_bytes <= 0:
        raise ValueError(f"target datablock size must be positive, got {target_size_bytes}")
    groups: list[list[SourceFile]] = []
    current: list[SourceFile] = []
    current_packed = 0
    for f in files:
        packed = f.packed_size
        if current and tarformat.archive_size([current_packed + packed]) > target_size_bytes:
            groups.append(current)
            current, current_packed = [], 0
        current.append(f)
        current_packed += packed
    if current:
        groups.append(current)
    first = max(taken_indices, default=-1) + 1
    return [PlannedDatablock(pid, first + i, tuple(g)) for i, g in enumerate(groups)]


@dataclass(frozen=True)
class DatasetPlan:
    reused: list[Manifest]  # datablocks on the LTS holding exactly some of the files: kept as they are
    new: list[PlannedDatablock]  # the other files, to be written under names no file on the LTS has
    superseded: list[str]  # archive ids of the other datablocks on the LTS (not part of this archive)


def plan_dataset_datablocks(
    pid: str,
    files: list[SourceFile],
    listed: dict[str, ListedFile],
    on_lts: list[Manifest],
    taken_indices: Iterable[int],
    target_size_bytes: int,
    registered: Iterable[str] = (),
) -> DatasetPlan:
    """Reuse what is on the LTS, plan the rest. A datablock on the LTS is reused when each of its files is a
    landing-zone file with the same path, size and modification time whose listed checksum (if SciCat has one
    in the manifest's algorithm) agrees; those in `registered` (archive ids) are considered first."""
    wanted = {f.path: f for f in files}
    covered: set[str] = set()
    reused, superseded = [], []
    first = set(registered)
    for manifest in sorted(on_lts, key=lambda m: (m.archiveId not in first, m.archiveId)):
        members = manifest.dataFileList
        if all(
            _same_file(m, wanted.get(m.path), listed.get(m.path), manifest.chkAlg) and m.path not in covered
            for m in members
        ):
            reused.append(manifest)
            covered.update(m.path for m in members)
        else:
            superseded.append(manifest.archiveId)
    rest = [f for f in files if f.path not in covered]
    return DatasetPlan(reused, plan_datablocks(pid, rest, target_size_bytes, taken_indices), superseded)


def _same_file(member: DataFileRecord, source: SourceFile | None, listed: ListedFile | None, algorithm: str) -> bool:
    if source is None or member.size != source.size or datetime.fromisoformat(member.time) != source.modified:
        return False
    return not (listed and listed.checksum and listed.checksum.contradicts(algorithm, member.chk))


def check_expected_files(pid: str, files: Iterable[SourceFile], listed: dict[str, ListedFile]) -> list[str]:
    """Check the landing zone against the files SciCat lists (origdatablocks, by path).

    Raises MissingFilesError naming every listed file that is absent or has another size.
    Returns the paths present in the landing zone but not listed (archived too; the caller may log them)."""
    present = {f.path: f for f in files}
    missing = sorted(p for p in listed if p not in present)
    if missing:
        raise MissingFilesError(pid, missing)
    resized = sorted(
        f"{p} (listed {f.size} bytes, found {present[p].size})" for p, f in listed.items() if present[p].size != f.size
    )
    if resized:
        raise MissingFilesError(pid, resized, detail="differ in size from the dataset's file list")
    return sorted(p for p in present if p not in listed)
