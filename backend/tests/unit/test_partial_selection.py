"""Which datablocks a partial retrieval reads, and the user error for files a dataset does not hold."""

import pytest

from archiver.packing.errors import DatasetUserError, FilesNotInDatasetError
from archiver.packing.partial import select_files
from archiver.packing.records import DatablockRecord, DataFileRecord

PID = "20.500/x"


def _block(index: int, paths: list[str]) -> DatablockRecord:
    files = [
        DataFileRecord(path=p, size=1, time="2026-01-01T00:00:00Z", chk="0", uid="0", gid="0", perm="-rw-r--r--")
        for p in paths
    ]
    return DatablockRecord(
        datasetId=PID,
        archiveId=f"openem-network/datasets/x/datablocks/x_{index:05d}.tar",
        size=len(files),
        packedSize=1024,
        chkAlg="sha256",
        dataFileList=files,
    )


BLOCKS = [_block(0, ["a", "b"]), _block(1, ["c", "d/e"]), _block(2, ["f"])]


def test_only_the_datablocks_holding_the_files_are_selected():
    selected = select_files(PID, BLOCKS, ["d/e", "./a", "b", "a"])
    assert [(s.datablock.archiveId[-9:], [f.path for f in s.files]) for s in selected] == [
        ("00000.tar", ["a", "b"]),
        ("00001.tar", ["d/e"]),
    ]


def test_files_not_in_the_dataset_are_a_user_error_naming_each():
    with pytest.raises(FilesNotInDatasetError) as raised:
        select_files(PID, BLOCKS, ["a", "nope", "d"])
    assert isinstance(raised.value, DatasetUserError)
    assert raised.value.files == ["nope", "d"]
    assert "'nope', 'd'" in str(raised.value) and PID in str(raised.value)
