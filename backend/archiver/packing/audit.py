"""Auditing the LTS: what is stored, which datablocks to re-verify next, and where the LTS and SciCat disagree.

Plain functions over the LTS store and SciCat's records (JSON fields); the `lts_audit` flow runs them.

The time a datablock was last verified is kept on the LTS beside its manifest, in
`<name>.audit.json` (`{"archiveId", "chk", "verified", "ok", "problems"}`), written atomically
(temporary `.partial` name, fsync, rename). A record whose `chk` is not the manifest's (the datablock
was written again since) counts as absent, and a datablock without one was last verified when its
manifest was written (archival verifies every datablock right after writing it; on a cold store by the
checksum S3 keeps, so its first re-read is an audit's). A failed audit leaves `ok` false, which puts the
datablock first in line again until it is repaired. On a cold store only re-reads are recorded as verified;
a failed check of S3's stored checksum is recorded too (`ok` false: re-read first).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from archiver.packing import naming
from archiver.packing.cleanup import DISCARDED, set_aside_time
from archiver.packing.errors import InvalidNameError
from archiver.packing.records import read_manifest
from archiver.storage.lts_store import LtsStore

AUDIT_SUFFIX = ".audit.json"
NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Finding:
    """One thing wrong on the LTS, naming the dataset and the datablock (or file) concerned."""

    kind: str  # fixity, scicat-mismatch, dark, lost, manifest-without-tar, tar-without-manifest, stale-partial, ...
    pid: str
    what: str  # the archiveId, or the path relative to the LTS root
    detail: str

    def line(self) -> str:
        return f"{self.kind}: dataset {self.pid}, {self.what}: {self.detail}"


@dataclass(frozen=True)
class StoredDatablock:
    archive_id: str
    pid: str
    packed_size: int  # bytes of the tar file
    last_verified: datetime


@dataclass
class DatasetOnLts:
    pid: str
    tars: dict[str, int] = field(default_factory=dict)  # archiveId -> bytes of the tar
    manifests: set[str] = field(default_factory=set)  # archiveIds whose manifest exists
    partials: dict[str, datetime] = field(default_factory=dict)  # path relative to the root -> mtime
    changed: dict[str, datetime] = field(default_factory=dict)  # archiveId -> newest mtime of its tar and manifest
    discarded: dict[str, datetime] = field(default_factory=dict)  # path relative to the root -> set-aside time


def audit_record_key(archive_id: str) -> str:
    """The audit record beside a datablock (`<name>.audit.json`)."""
    return archive_id.removesuffix(naming.TAR_SUFFIX) + AUDIT_SUFFIX


def inventory(store: LtsStore, pids: Iterable[str] | None = None) -> tuple[dict[str, DatasetOnLts], list[Finding]]:
    """What each dataset folder on the LTS holds (only `pids` when given; their folders need not exist).
    Folders that are no dataset's are findings."""
    found: dict[str, DatasetOnLts] = {}
    odd: list[Finding] = []
    if pids is not None:
        names = [naming.safe_name(pid) for pid in pids]
    else:
        names = [entry.name for entry in store.entries(naming.DATASETS_PREFIX) if entry.is_folder]
    for name in names:
        folder = f"{naming.DATASETS_PREFIX}/{name}"
        try:
            pid = naming.pid_from_safe_name(name)
        except InvalidNameError as e:
            odd.append(Finding("unknown-folder", "?", folder, str(e)))
            continue
        found[pid] = _dataset_inventory(store, pid, folder)
    return found, odd


def _dataset_inventory(store: LtsStore, pid: str, folder: str) -> DatasetOnLts:
    dataset = DatasetOnLts(pid)
    blocks = f"{folder}/datablocks"
    for entry in store.entries(blocks):
        name, key = entry.name, f"{blocks}/{entry.name}"
        if name.endswith(naming.PARTIAL_SUFFIX):
            dataset.partials[key] = entry.modified
        elif name.endswith(naming.TAR_SUFFIX):
            dataset.tars[key] = entry.size
            _note_change(dataset, key, entry.modified)
        elif name.endswith(naming.MANIFEST_SUFFIX):
            tar_key = f"{blocks}/{name.removesuffix(naming.MANIFEST_SUFFIX)}{naming.TAR_SUFFIX}"
            dataset.manifests.add(tar_key)
            _note_change(dataset, tar_key, entry.modified)
    discarded = f"{folder}/{DISCARDED}"
    if any(e.name == DISCARDED and e.is_folder and not e.is_link for e in store.entries(folder)):
        for entry in store.entries(discarded):
            if entry.is_folder and not entry.is_link:
                dataset.discarded[f"{discarded}/{entry.name}"] = set_aside_time(entry)
    return dataset


def _note_change(dataset: DatasetOnLts, archive_id: str, changed: datetime) -> None:
    dataset.changed[archive_id] = max(changed, dataset.changed.get(archive_id, changed))


def last_verified(store: LtsStore, archive_id: str) -> datetime:
    """When the datablock was last verified successfully (module doc); NEVER when unknown or it failed."""
    naming.check_archive_id(archive_id)
    try:
        manifest = read_manifest(store, archive_id)
    except (OSError, ValueError, ValidationError):
        return NEVER
    try:
        record = json.loads(store.read_text(audit_record_key(archive_id)))
        if record.get("chk") == manifest.chk:
            return datetime.fromisoformat(record["verified"]) if record.get("ok") else NEVER
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return datetime.fromisoformat(manifest.created)
    except ValueError:
        return NEVER


def record_verification(store: LtsStore, archive_id: str, when: datetime, problems: list[str]) -> None:
    """Keep the outcome of an audit of the datablock beside its manifest (atomically)."""
    naming.check_archive_id(archive_id)
    try:
        chk = read_manifest(store, archive_id).chk
    except (OSError, ValueError, ValidationError):
        chk = None
    text = json.dumps(
        {"archiveId": archive_id, "chk": chk, "verified": when.isoformat(), "ok": not problems, "problems": problems},
        indent=1,
    )
    store.write_text(audit_record_key(archive_id), text)


def stored_datablocks(store: LtsStore, datasets: Mapping[str, DatasetOnLts]) -> list[StoredDatablock]:
    """Every datablock with both tar and manifest, with its last-verified time."""
    return [
        StoredDatablock(archive_id, pid, size, last_verified(store, archive_id))
        for pid, dataset in datasets.items()
        for archive_id, size in dataset.tars.items()
        if archive_id in dataset.manifests
    ]


def select_for_fixity(
    blocks: Iterable[StoredDatablock], byte_budget: int | None, oldest_always: bool = True
) -> list[StoredDatablock]:
    """The datablocks verified longest ago, oldest first, as many as fit in `byte_budget` bytes (all
    of them without one). The oldest is taken even alone larger than the budget, or it would never be
    verified, unless `oldest_always` is False (a budget of restores from a cold tier, which are billed: never
    more than it); the order is kept strictly, so no datablock is overtaken by smaller ones forever."""
    ordered = sorted(blocks, key=lambda b: (b.last_verified, b.archive_id))
    if byte_budget is None:
        return ordered
    chosen: list[StoredDatablock] = []
    total = 0
    for block in ordered:
        if (chosen or not oldest_always) and total + block.packed_size > byte_budget:
            break
        chosen.append(block)
        total += block.packed_size
    return chosen


def overdue(blocks: Iterable[StoredDatablock], period: timedelta, now: datetime) -> list[StoredDatablock]:
    """Datablocks not verified within `period`: the budget per run is too small for the LTS."""
    return [b for b in blocks if now - b.last_verified > period]


def consistency_findings(
    dataset: DatasetOnLts,
    registered: list[dict[str, Any]] | None,
    *,
    now: datetime,
    partial_age: timedelta,
    discarded_retention: timedelta,
) -> list[Finding]:
    """Where the dataset's folder on the LTS and SciCat's datablocks (JSON fields; None: SciCat does not
    know the dataset) disagree, and leftovers that should be gone.

    What a live archival is in the middle of (a manifest whose tar is not renamed yet, datablocks verified but
    not registered yet, `.partial` files) is reported only once unchanged for `partial_age`."""
    pid = dataset.pid
    findings: list[Finding] = []
    on_record = {wire.get("archiveId"): wire for wire in registered or []}

    def settled(archive_id: str) -> bool:
        return now - dataset.changed[archive_id] > partial_age

    for archive_id in sorted(a for a in dataset.manifests - set(dataset.tars) if settled(a)):
        findings.append(Finding("manifest-without-tar", pid, archive_id, "the manifest is on the LTS, the tar is not"))
    for archive_id in sorted(a for a in set(dataset.tars) - dataset.manifests if settled(a)):
        findings.append(Finding("tar-without-manifest", pid, archive_id, "the tar is on the LTS, its manifest is not"))
    for archive_id, size in sorted(dataset.tars.items()):
        if archive_id not in on_record and settled(archive_id):
            known = "knows no such dataset" if registered is None else "lists no such datablock"
            findings.append(Finding("dark", pid, archive_id, f"{size} bytes on the LTS; SciCat {known}"))
    counted = Counter(wire.get("archiveId") for wire in registered or [])
    for archive_id, count in sorted((str(a), n) for a, n in counted.items() if n > 1):
        findings.append(
            Finding(
                "duplicate-registration",
                pid,
                archive_id,
                f"registered {count} times in SciCat; delete all but one record",
            )
        )
    for recorded_id, wire in sorted(on_record.items(), key=lambda item: str(item[0])):
        finding = _lost(pid, str(recorded_id), wire.get("packedSize"), dataset.tars.get(str(recorded_id)))
        if finding is not None:
            findings.append(finding)
    for path, modified in sorted(dataset.partials.items()):
        if now - modified > partial_age:
            findings.append(
                Finding(
                    "stale-partial",
                    pid,
                    path,
                    f"half-written file last changed {modified:%Y-%m-%d %H:%M} UTC, "
                    f"older than any live run ({partial_age} allowed)",
                )
            )
    for path, set_aside in sorted(dataset.discarded.items()):
        if now - set_aside > discarded_retention:
            findings.append(
                Finding(
                    "discarded-past-retention",
                    pid,
                    path,
                    f"set aside {set_aside:%Y-%m-%d %H:%M} UTC, kept longer than {discarded_retention.days} day(s)",
                )
            )
    return findings


def _lost(pid: str, archive_id: str, recorded: int | None, on_lts: int | None, why: str = "") -> Finding | None:
    """A datablock SciCat registers (`recorded` packed bytes) whose tar is missing (`on_lts` None) or differs."""
    if on_lts is None:
        return Finding("lost", pid, archive_id, f"registered in SciCat ({recorded} bytes), no tar on the LTS{why}")
    if on_lts != recorded:
        return Finding("lost", pid, archive_id, f"the tar has {on_lts} bytes, SciCat records {recorded}")
    return None


def lost_beyond_inventory(
    store: LtsStore,
    registered: Iterable[tuple[str, str, int | None]],
    inventoried: Container[str],
) -> Iterator[Finding]:
    """`lost` findings for SciCat's datablocks (dataset, archiveId, packed bytes) of the datasets the inventory
    did not cover (`consistency_findings` compares those it did): one stat per datablock, nothing kept, so a
    listing of all of SciCat streams through in bounded memory. A datablock whose archiveId does not name a
    tar in its own dataset's folder is lost too: retrieval refuses to read it."""
    for pid, archive_id, recorded in registered:
        if pid in inventoried:
            continue
        try:
            own = naming.archive_id_of_dataset(pid, archive_id)
        except InvalidNameError:  # a PID no LTS folder can be named after
            own = False
        if not own:
            yield Finding(
                "lost",
                pid,
                archive_id,
                f"registered in SciCat ({recorded} bytes), no tar on the LTS: "
                "its archiveId does not name a datablock in the dataset's own LTS folder",
            )
            continue
        try:
            on_lts: int | None = store.size(naming.check_archive_id(archive_id))
        except FileNotFoundError:
            on_lts = None
        gone = "; the dataset's folder is not on the LTS" if not store.is_folder(naming.dataset_key(pid)) else ""
        finding = _lost(pid, archive_id, recorded, on_lts, gone)
        if finding is not None:
            yield finding


def scicat_checksum_findings(
    pid: str,
    manifest_files: Iterable[Any],
    chk_alg: str,
    archive_id: str,
    orig_files: Iterable[Mapping[str, Any]],
    orig_chk_alg: str | None,
) -> list[Finding]:
    """Member checksums of a verified manifest against those the dataset's origdatablocks register
    (only files that carry a checksum of the same algorithm)."""
    if orig_chk_alg and orig_chk_alg.lower() != chk_alg:
        return []
    registered = {str(f.get("path", "")).removeprefix("./"): f for f in orig_files}
    findings = []
    for member in manifest_files:
        orig = registered.get(member.path)
        if orig is None:
            continue
        if orig.get("size") is not None and orig["size"] != member.size:
            findings.append(
                Finding(
                    "scicat-mismatch",
                    pid,
                    archive_id,
                    f"member {member.path!r} is {member.size} bytes, its origdatablock says {orig['size']}",
                )
            )
        if orig.get("chk") and orig["chk"] != member.chk:
            findings.append(
                Finding(
                    "scicat-mismatch",
                    pid,
                    archive_id,
                    f"member {member.path!r} {chk_alg} is {member.chk}, its origdatablock says {orig['chk']}",
                )
            )
    return findings
