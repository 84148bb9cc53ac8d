"""Whether a dataset is archived, decided from what is on record: SciCat's datablocks and the LTS.

A datablock is registered in SciCat only after its tar was verified under its final name, and a
manifest exists only beside a completely written tar. So a registered datablock whose manifest on
the LTS says the same (archive id, sizes, checksum algorithm, every file with its checksum) and
whose tar has the recorded size is one that was verified. A dataset is archived when its registered
datablocks all are, and together hold every file its origdatablocks list. A status string in the
lifecycle is no evidence: SciCat resets it when a lifecycle update is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from archiver.packing import naming
from archiver.packing.errors import InvalidNameError
from archiver.packing.records import DatablockRecord, read_manifest


@dataclass(frozen=True)
class ArchiveOnRecord:
    matching: list[str] = field(default_factory=list)  # archive ids registered and matching the LTS
    problems: list[str] = field(default_factory=list)  # registered datablocks that do not
    missing_files: list[str] = field(default_factory=list)  # listed files in no matching datablock

    @property
    def complete(self) -> bool:
        return bool(self.matching) and not self.problems and not self.missing_files


def _files(record: DatablockRecord) -> list[tuple[str, int, str]]:
    return [(f.path, f.size, f.chk) for f in record.dataFileList]


def same_datablock(a: DatablockRecord, b: DatablockRecord) -> bool:
    """The same stored package with the same content on record (as SciCat and a manifest both describe it)."""
    return (a.archiveId, a.size, a.packedSize, a.chkAlg, _files(a)) == (b.archiveId, b.size, b.packedSize, b.chkAlg, _files(b))


def record_from_wire(pid: str, wire: dict[str, Any]) -> DatablockRecord:
    """SciCat's datablock (its JSON fields) as a record of dataset `pid`; ValidationError if it is not one we write."""
    return DatablockRecord.model_validate({**wire, "datasetId": pid})


def datablock_problem(lts_root: Path, pid: str, wire: dict[str, Any]) -> str | None:
    """Why a datablock registered in SciCat (its JSON fields) does not match the LTS (None when it does)."""
    archive_id = wire.get("archiveId")
    try:
        record = record_from_wire(pid, wire)
    except ValidationError as e:
        return f"{archive_id}: not a datablock record this archiver writes ({e.error_count()} problem(s): {e.errors()[0]['msg']})"
    if not naming.archive_id_of_dataset(pid, archive_id):
        return f"archiveId {archive_id!r} is not a datablock of dataset {pid}"
    try:
        tar_path = naming.datablock_path(lts_root, archive_id)
        manifest = read_manifest(naming.manifest_path(tar_path))
        tar_size = tar_path.stat().st_size
    except (OSError, ValueError, ValidationError, InvalidNameError) as e:
        return f"{archive_id}: not on the LTS ({type(e).__name__}: {e})"
    if manifest.datasetId != pid or not same_datablock(record, manifest.record()):
        return f"{archive_id}: SciCat's record and the manifest on the LTS differ"
    if tar_size != record.packedSize:
        return f"{archive_id}: the tar has {tar_size} bytes, {record.packedSize} are recorded"
    return None


def check_registered(
    lts_root: Path, pid: str, registered: Iterable[dict[str, Any]], listed_paths: Iterable[str],
) -> ArchiveOnRecord:
    """Compare a dataset's registered datablocks (SciCat's JSON) with the LTS and its listed files (module doc)."""
    matching, problems, held = [], [], set()
    for wire in registered:
        problem = datablock_problem(lts_root, pid, wire)
        if problem:
            problems.append(problem)
        else:
            matching.append(wire["archiveId"])
            held.update(f["path"] for f in wire["dataFileList"])
    missing = sorted({p.removeprefix("./") for p in listed_paths} - held)
    return ArchiveOnRecord(matching, problems, missing)
