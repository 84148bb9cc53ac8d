"""What a datablock is on record: SciCat's Datablock fields and the manifest beside the tar on the LTS."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

ChecksumAlgorithm = Literal["sha256", "md5"]
# Packing format of the datablocks this code writes (SciCat Datablock.version).
FORMAT_VERSION = "tar-pax-1"
MANIFEST_FORMAT = "archiver-datablock-manifest/1"


def new_hasher(algorithm: ChecksumAlgorithm):
    if algorithm not in ("sha256", "md5"):
        raise ValueError(f"checksum algorithm {algorithm!r} is not supported; use 'sha256' or 'md5'")
    return hashlib.new(algorithm)


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

    def record(self) -> DatablockRecord:
        return DatablockRecord.model_validate(self.model_dump(include=set(DatablockRecord.model_fields)))


def write_json_durably(path: Path, text: str, temp_path: Path) -> None:
    """Write to `temp_path`, fsync, rename to `path` (the caller fsyncs the folder)."""
    with open(temp_path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp_path, path)


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
