"""Retrieve one datablock: LTS tar -> retrieval bucket, every member checked while it uploads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from archiver.packing import naming
from archiver.packing.checking import check_datablock_stream
from archiver.packing.errors import IntegrityError
from archiver.packing.records import DatablockRecord, Manifest, read_manifest
from archiver.storage.lts_store import LtsStore
from archiver.storage.s3 import MultipartUpload

# Object metadata of a retrieved object: the checksum it was checked against (S3 keeps it with the object).
CHK_METADATA, CHK_ALG_METADATA = "chk", "chk-alg"


@dataclass(frozen=True)
class RetrievedObject:
    """An object of the retrieval bucket as it is, or must be: checked while it was uploaded against `chk`."""

    key: str
    size: int
    algorithm: str
    chk: str


def checksum_metadata(algorithm: str, chk: str) -> dict[str, str]:
    return {CHK_METADATA: chk, CHK_ALG_METADATA: algorithm}


def _manifest(store: LtsStore, archive_id: str, what: str) -> Manifest:
    """The manifest beside the datablock; IntegrityError naming `what` when it cannot be read."""
    try:
        return read_manifest(store, archive_id)
    except (OSError, ValueError, ValidationError) as e:
        raise IntegrityError(what, [f"manifest unreadable: {e}"]) from e


def expected_datablock(store: LtsStore, record: DatablockRecord) -> RetrievedObject:
    """What the retrieved copy of a registered datablock must be: its key, size and the manifest's tar checksum
    (registered.check_registered compared that manifest with SciCat's record before)."""
    manifest = _manifest(store, record.archiveId, f"retrieval of datablock {record.archiveId}")
    return RetrievedObject(naming.retrieval_key(record.archiveId), record.packedSize, manifest.chkAlg, manifest.chk)


def retrieve_datablock(
    store: LtsStore,
    archive_id: str,
    s3,
    bucket: str,
    *,
    file_timeout_s: float,
    record: DatablockRecord | None = None,
    on_bytes: Callable[[int], None] | None = None,
    part_size: int = 8 * 1024 * 1024,
    parts_in_flight: int = 4,
) -> RetrievedObject:
    """Upload the datablock's tar to `bucket` under `naming.retrieval_key(archive_id)`.

    Members are checked against `record` (SciCat's Datablock) when given, else against the
    manifest on the LTS; the whole tar against the manifest's checksum. On any difference the
    multipart upload is aborted, so no unverified object appears, and IntegrityError names
    every problem."""
    key = naming.retrieval_key(archive_id)  # refuses ids outside a datablocks/ folder
    what = f"retrieval of datablock {archive_id}"
    if record is not None and not naming.archive_id_of_dataset(record.datasetId, archive_id):
        raise IntegrityError(what, [f"the datablock is not one of dataset {record.datasetId}: refused"])
    store.wait_until_readable(archive_id, file_timeout_s)
    manifest = _manifest(store, archive_id, what)
    files, algorithm = manifest.dataFileList, manifest.chkAlg
    problems = []
    if record is not None:
        files, algorithm = record.dataFileList, record.chkAlg
        if record.chkAlg != manifest.chkAlg:
            problems.append(f"SciCat records chkAlg {record.chkAlg}, the manifest {manifest.chkAlg}")
    metadata = checksum_metadata(manifest.chkAlg, manifest.chk)
    with (
        store.open_datablock(archive_id, fresh=False) as raw,
        MultipartUpload(s3, bucket, key, part_size, parts_in_flight, metadata=metadata) as upload,
    ):
        problems += check_datablock_stream(
            raw,
            files,
            algorithm,
            expected_chk=manifest.chk if algorithm == manifest.chkAlg else None,
            expected_size=manifest.packedSize,
            consumer=upload.write,
            on_bytes=on_bytes,
        )
        if problems:
            raise IntegrityError(what, problems)  # leaving the block aborts the upload
        upload.complete()
    return RetrievedObject(key, manifest.packedSize, manifest.chkAlg, manifest.chk)
