"""Whether a dataset is archived, decided from what is on record: SciCat's datablocks and the LTS.

A datablock is registered in SciCat only after its tar was verified under its final name, and a
manifest exists only beside a completely written tar. So a registered datablock whose manifest on
the LTS says the same (archive id, sizes, checksum algorithm, every file with its checksum) and
whose tar has the recorded size is one that was verified. A dataset is archived when its registered
datablocks all are, and together hold every file its origdatablocks list. A status string in the
lifecycle is no evidence: SciCat resets it when a lifecycle update is replaced.

Registered datablocks are never rewritten. When a dataset's files as SciCat lists them differ from what
they hold, the dataset was changed after it was archived (`archive_differences`), unless the registration
is an unfinished one: the landing zone, cleaned only once a registration is complete, still holds every
registered file as it was written (`written_from`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from archiver.packing import naming
from archiver.packing.errors import InvalidNameError
from archiver.packing.planning import ListedFile, SourceFile
from archiver.packing.records import DatablockRecord, read_manifest
from archiver.storage.lts_store import LtsStore


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
    return (a.archiveId, a.size, a.packedSize, a.chkAlg, _files(a)) == (
        b.archiveId,
        b.size,
        b.packedSize,
        b.chkAlg,
        _files(b),
    )


def record_from_wire(pid: str, wire: dict[str, Any]) -> DatablockRecord:
    """SciCat's datablock (its JSON fields) as a record of dataset `pid`; ValidationError if it is not one we write."""
    return DatablockRecord.model_validate({**wire, "datasetId": pid})


def datablock_problem(store: LtsStore, pid: str, wire: dict[str, Any]) -> str | None:
    """Why a datablock registered in SciCat (its JSON fields) does not match the LTS (None when it does)."""
    try:
        record = record_from_wire(pid, wire)
    except ValidationError as e:
        return (
            f"{wire.get('archiveId')}: not a datablock record this archiver writes "
            f"({e.error_count()} problem(s): {e.errors()[0]['msg']})"
        )
    archive_id = record.archiveId
    if not naming.archive_id_of_dataset(pid, archive_id):
        return f"archiveId {archive_id!r} is not a datablock of dataset {pid}"
    try:
        manifest = read_manifest(store, archive_id)
        tar_size = store.size(archive_id)
    except (OSError, ValueError, ValidationError, InvalidNameError) as e:
        return f"{archive_id}: not on the LTS ({type(e).__name__}: {e})"
    if manifest.datasetId != pid or not same_datablock(record, manifest.record()):
        return f"{archive_id}: SciCat's record and the manifest on the LTS differ"
    if tar_size != record.packedSize:
        return f"{archive_id}: the tar has {tar_size} bytes, {record.packedSize} are recorded"
    return None


def check_registered(
    store: LtsStore,
    pid: str,
    registered: Iterable[dict[str, Any]],
    listed_paths: Iterable[str],
) -> ArchiveOnRecord:
    """Compare a dataset's registered datablocks (SciCat's JSON) with the LTS and its listed files (module doc)."""
    matching, problems, held = [], [], set[str]()
    for wire in registered:
        problem = datablock_problem(store, pid, wire)
        if problem:
            problems.append(problem)
        else:
            matching.append(wire["archiveId"])
            held.update(f["path"] for f in wire["dataFileList"])
    missing = sorted({p.removeprefix("./") for p in listed_paths} - held)
    return ArchiveOnRecord(matching, problems, missing)


@dataclass(frozen=True)
class ArchiveDifferences:
    changed: list[str] = field(default_factory=list)  # held with other content, or held but no longer listed
    not_archived: list[str] = field(default_factory=list)  # listed, held by no registered datablock


def archive_differences(registered: Iterable[dict[str, Any]], listed: Iterable[ListedFile]) -> ArchiveDifferences:
    """How the files SciCat lists for a dataset (every origdatablock entry) differ from the files its
    registered datablocks (SciCat's JSON) hold: sizes, and checksums where both are in one algorithm."""
    held: dict[str, tuple[int, str | None, str | None]] = {}
    for wire in registered:
        for f in wire.get("dataFileList", []):
            held[f["path"]] = (f["size"], wire.get("chkAlg"), f.get("chk"))
    changed, not_archived, seen = [], [], set()
    for f in listed:
        seen.add(f.path)
        if f.path not in held:
            not_archived.append(f"{f.path} (listed, in no registered datablock)")
            continue
        size, algorithm, chk = held[f.path]
        if size != f.size:
            changed.append(f"{f.path} (listed {f.size} bytes, archived {size})")
        elif f.checksum and algorithm and chk and f.checksum.contradicts(algorithm, chk):
            changed.append(f"{f.path} (listed {f.checksum.algorithm} {f.checksum.value}, archived {chk})")
    changed += [f"{path} (archived, no longer listed)" for path in sorted(held.keys() - seen)]
    return ArchiveDifferences(sorted(set(changed)), sorted(set(not_archived)))


def written_from(registered: Iterable[dict[str, Any]], files: Iterable[SourceFile]) -> bool:
    """Whether the landing zone (`files`) still holds every file of the registered datablocks as it was
    when they were written: same size and modification time."""
    present = {f.path: f for f in files}
    for wire in registered:
        for f in wire.get("dataFileList", []):
            source = present.get(f["path"])
            if source is None or source.size != f["size"] or _time(f.get("time")) != source.modified:
                return False
    return True


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
