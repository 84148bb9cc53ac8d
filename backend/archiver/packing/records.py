"""What a datablock is on record: SciCat's Datablock fields and the manifest beside the tar on the LTS."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict

from archiver.packing import naming
from archiver.storage.lts_store import LtsStore

ChecksumAlgorithm = Literal["sha256", "md5"]
# Packing format of the datablocks this code writes (SciCat Datablock.version).
FORMAT_VERSION = "tar-pax-1"
MANIFEST_FORMAT = "archiver-datablock-manifest/1"


def new_hasher(algorithm: ChecksumAlgorithm):
    if algorithm not in ("sha256", "md5"):
        raise ValueError(f"checksum algorithm {algorithm!r} is not supported; use 'sha256' or 'md5'")
    return hashlib.new(algorithm)


def listed_algorithm(name: str | None) -> str | None:
    """hashlib's name for a checksum algorithm as an ingestor wrote it in an origdatablock's `chkAlg`
    ("SHA-256", "sha256", "MD5", ...); None when there is none or hashlib cannot compute it."""
    if not name:
        return None
    normalized = name.strip().lower().replace("-", "").replace("_", "")
    return normalized if normalized in hashlib.algorithms_guaranteed and not normalized.startswith("shake") else None


class ListedChecksum(BaseModel):
    """A file's checksum as SciCat's origdatablocks list it (algorithm in hashlib's spelling)."""

    model_config = ConfigDict(frozen=True)
    algorithm: str
    value: str

    def contradicts(self, algorithm: str, value: str) -> bool:
        """Whether a checksum computed with `algorithm` proves the file is not the one listed."""
        return self.algorithm == algorithm and self.value.strip().lower() != value.strip().lower()


class DataFileRecord(BaseModel):
    """SciCat DataFile: one member of a datablock."""

    model_config = ConfigDict(frozen=True)
    path: str
    size: int
    time: str  # ISO 8601, the landing-zone object's LastModified
    chk: str
    uid: str
    gid: str
    perm: str


class DatablockRecord(BaseModel):
    """The body SciCat's `POST datasets/{pid}/datablocks` takes."""

    model_config = ConfigDict(frozen=True)
    datasetId: str
    archiveId: str
    size: int  # unpacked bytes: sum of the member sizes
    packedSize: int  # bytes of the tar file
    chkAlg: ChecksumAlgorithm
    version: str = FORMAT_VERSION
    dataFileList: list[DataFileRecord]


class Manifest(DatablockRecord):
    """Written beside each datablock so the LTS describes itself without SciCat."""

    format: str = MANIFEST_FORMAT
    chk: str  # checksum of the whole tar file, algorithm chkAlg
    created: str
    # The LTS store's own checksum of the tar as it stored it, computed while writing (LtsStore.publish_datablock):
    # on the s3 store the composite SHA-256 of its parts, `<base64>-<parts>`; absent on the POSIX store, which
    # keeps none (and in manifests written before the s3 store recorded it).
    storedChecksum: str | None = None

    def to_json(self) -> str:
        """The manifest file's text; a field without a value is left out, so a POSIX manifest is as before."""
        return self.model_dump_json(indent=1, exclude_none=True)

    def record(self) -> DatablockRecord:
        return DatablockRecord.model_validate(self.model_dump(include=set(DatablockRecord.model_fields)))


def parse_manifest(text: str) -> Manifest:
    return Manifest.model_validate(json.loads(text))


def read_manifest(store: LtsStore, archive_id: str) -> Manifest:
    """The manifest beside a datablock in the LTS store; OSError when it cannot be read, ValueError (a pydantic
    ValidationError too) when it is no manifest."""
    return parse_manifest(store.read_text(naming.manifest_id(naming.check_archive_id(archive_id))))
