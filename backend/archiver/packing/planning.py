"""What goes into which datablock: the dataset's landing-zone files, in a stable order, split by size."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from archiver.packing import naming, tarformat
from archiver.packing.errors import EmptyDatasetError, InvalidNameError, MissingFilesError, UnsafeFileNamesError
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
        path = obj["Key"][len(prefix):]
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


def plan_datablocks(pid: str, files: Iterable[SourceFile], target_size_bytes: int) -> list[PlannedDatablock]:
    """Consecutive runs of files whose tar stays within `target_size_bytes`; a bigger file gets its own datablock."""
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
    return [PlannedDatablock(pid, i, tuple(g)) for i, g in enumerate(groups)]


def check_expected_files(pid: str, files: Iterable[SourceFile], expected: Iterable[tuple[str, int | None]]) -> list[str]:
    """Check the landing zone against the files SciCat lists (origdatablocks: path, size).

    Raises MissingFilesError naming every listed file that is absent or has another size.
    Returns the paths present in the landing zone but not listed (archived too; the caller may log them)."""
    present = {f.path: f for f in files}
    listed: dict[str, int | None] = {}
    for path, size in expected:
        listed[path.removeprefix("./")] = size
    missing = sorted(p for p in listed if p not in present)
    if missing:
        raise MissingFilesError(pid, missing)
    resized = sorted(
        f"{p} (listed {s} bytes, found {present[p].size})"
        for p, s in listed.items() if s is not None and present[p].size != s
    )
    if resized:
        raise MissingFilesError(pid, resized, detail="differ in size from the dataset's file list")
    return sorted(p for p in present if p not in listed)
