"""The data path against a real S3 server (SeaweedFS over HTTP) and a real LTS folder."""

import hashlib
import io
import os
import stat
import tarfile
from urllib.parse import urlsplit

import httpx
import pytest

from archiver.packing import naming
from archiver.packing.archive import archive_datablock, datablocks_on_lts, verify_datablock
from archiver.packing.cleanup import (
    abort_retrieval_uploads,
    delete_landing_zone_files,
    delete_retrieved,
    set_aside_datablocks,
)
from archiver.packing.errors import (
    ChecksumMismatchError,
    DatablockExistsError,
    EmptyDatasetError,
    IntegrityError,
    MissingFilesError,
    UnsafeFileNamesError,
)
from archiver.packing.planning import list_dataset_files, plan_datablocks
from archiver.packing.records import ListedChecksum, read_manifest
from archiver.packing.retrieve import retrieve_datablock
from archiver.storage.lts import FileOwnership
from archiver.storage.posix_store import PosixLtsStore
from archiver.storage.s3 import presigned_get_url
from tests import lts_layout
from tests.conftest import S3_TEST_CREDENTIALS, S3_TEST_REGION

pytestmark = pytest.mark.integration

PID = "20.500.11935/0a1b-c2d3"
MiB = 1024 * 1024


def upload(s3, bucket, pid, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        s3.put_object(Bucket=bucket, Key=naming.landing_prefix(pid) + path, Body=data)


def archive_all(s3, bucket, pid, lts_root, target_bytes, algorithm="sha256"):
    blocks = plan_datablocks(pid, list_dataset_files(s3, bucket, pid), target_bytes)
    records = [archive_datablock(s3, bucket, b, PosixLtsStore(lts_root), algorithm) for b in blocks]
    for r in records:
        verify_datablock(PosixLtsStore(lts_root), r.archiveId)
    return blocks, records


def members_of(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def tar_path(lts_root, archive_id):
    return lts_layout.datablock_path(lts_root, archive_id)


def multipart_uploads(s3, bucket):
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.fixture
def dataset():
    """Many small files in nested folders, an empty file, a long name, one file larger than the target."""
    files = {f"scan/{i:03d}/frame.tif": os.urandom(37 * i + 1) for i in range(60)}
    files["empty.txt"] = b""
    files["deep/" + "x" * 120 + "/" + "y" * 120 + ".dat"] = os.urandom(4096)
    files["raw/big.mrc"] = os.urandom(3 * MiB + 17)
    return files


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_round_trip_is_byte_identical(s3, bucket, second_bucket, lts_root, dataset, algorithm):
    upload(s3, bucket, PID, dataset)
    blocks, records = archive_all(s3, bucket, PID, lts_root, target_bytes=1 * MiB, algorithm=algorithm)
    assert len(blocks) >= 2
    big = [r for r in records if any(f.path == "raw/big.mrc" for f in r.dataFileList)]
    assert len(big) == 1 and len(big[0].dataFileList) == 1  # larger than the target: a datablock of its own

    retrieved = {}
    for record in records:
        assert record.chkAlg == algorithm and record.datasetId == PID
        assert record.size == sum(f.size for f in record.dataFileList)
        assert record.packedSize == tar_path(lts_root, record.archiveId).stat().st_size
        for f in record.dataFileList:
            assert f.chk == hashlib.new(algorithm, dataset[f.path]).hexdigest()
        key = retrieve_datablock(
            PosixLtsStore(lts_root), record.archiveId, s3, second_bucket, file_timeout_s=5, record=record
        ).key
        assert key.startswith(naming.retrieval_prefix(PID))
        retrieved.update(members_of(s3.get_object(Bucket=second_bucket, Key=key)["Body"].read()))
    assert retrieved == dataset
    assert [f.path for r in records for f in r.dataFileList] == sorted(dataset)


def test_lts_layout_manifest_and_no_temporary_files(s3, bucket, lts_root, dataset):
    upload(s3, bucket, PID, dataset)
    _, records = archive_all(s3, bucket, PID, lts_root, target_bytes=1 * MiB)
    folder = lts_layout.datablocks_folder(lts_root, PID)
    assert folder == lts_root / "openem-network/datasets/20.500.11935%2F0a1b-c2d3/datablocks"
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(naming.PARTIAL_SUFFIX)]
    assert len(names) == 2 * len(records)
    manifest = read_manifest(PosixLtsStore(lts_root), records[0].archiveId)
    assert manifest.record() == records[0]
    assert manifest.chk == hashlib.sha256(tar_path(lts_root, records[0].archiveId).read_bytes()).hexdigest()


def test_flipped_byte_and_truncation_are_reported_member_by_member(s3, bucket, second_bucket, lts_root):
    files = {"a.bin": os.urandom(200_000), "b.bin": os.urandom(200_000), "c.bin": os.urandom(200_000)}
    upload(s3, bucket, PID, files)
    _, (record,) = archive_all(s3, bucket, PID, lts_root, target_bytes=100 * MiB)
    path = tar_path(lts_root, record.archiveId)
    original = path.read_bytes()

    flipped = bytearray(original)
    flipped[original.index(files["b.bin"][:64]) + 1000] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError) as e:
        verify_datablock(PosixLtsStore(lts_root), record.archiveId)
    problems = "\n".join(e.value.problems)
    assert "'b.bin'" in problems and "'a.bin'" not in problems and "'c.bin'" not in problems
    assert "datablock sha256" in problems

    path.write_bytes(original[: original.index(files["b.bin"][:64]) + 5000])
    with pytest.raises(IntegrityError) as e:
        verify_datablock(PosixLtsStore(lts_root), record.archiveId)
    problems = "\n".join(e.value.problems)
    assert "missing member 'b.bin'" in problems and "missing member 'c.bin'" in problems
    assert "cut short" in problems and f"recorded {len(original)}" in problems


def test_unexpected_member_is_reported(s3, bucket, lts_root):
    upload(s3, bucket, PID, {"a.bin": b"a" * 1000})
    _, (record,) = archive_all(s3, bucket, PID, lts_root, target_bytes=100 * MiB)
    path = tar_path(lts_root, record.archiveId)
    with tarfile.open(path, "a", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("intruder")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(IntegrityError, match="unexpected member 'intruder'"):
        verify_datablock(PosixLtsStore(lts_root), record.archiveId)


def test_corrupt_datablock_never_reaches_the_retrieval_bucket(s3, bucket, second_bucket, lts_root):
    files = {f"f{i}.bin": os.urandom(3 * MiB) for i in range(4)}  # 12 MiB: several parts get uploaded first
    upload(s3, bucket, PID, files)
    _, (record,) = archive_all(s3, bucket, PID, lts_root, target_bytes=100 * MiB)
    # intact: uploaded in 3 parts through reused part buffers, byte-identical
    key = retrieve_datablock(
        PosixLtsStore(lts_root), record.archiveId, s3, second_bucket, file_timeout_s=5, part_size=5 * MiB
    ).key
    assert members_of(s3.get_object(Bucket=second_bucket, Key=key)["Body"].read()) == files
    s3.delete_object(Bucket=second_bucket, Key=key)

    path = tar_path(lts_root, record.archiveId)
    data = bytearray(path.read_bytes())
    data[data.index(files["f3.bin"][:64]) + 100] ^= 0xFF  # the last file: earlier parts are already uploaded
    path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as e:
        retrieve_datablock(
            PosixLtsStore(lts_root), record.archiveId, s3, second_bucket, file_timeout_s=5, part_size=5 * MiB
        )
    assert "member 'f3.bin'" in str(e.value)
    assert s3.list_objects_v2(Bucket=second_bucket).get("KeyCount", 0) == 0
    assert multipart_uploads(s3, second_bucket) == []


def test_checksum_recorded_in_scicat_is_checked_on_retrieval(s3, bucket, second_bucket, lts_root):
    upload(s3, bucket, PID, {"a.bin": b"a" * 1000})
    _, (record,) = archive_all(s3, bucket, PID, lts_root, target_bytes=100 * MiB)
    wrong = record.model_copy(update={"dataFileList": [record.dataFileList[0].model_copy(update={"chk": "0" * 64})]})
    with pytest.raises(IntegrityError, match="member 'a.bin' sha256"):
        retrieve_datablock(PosixLtsStore(lts_root), record.archiveId, s3, second_bucket, file_timeout_s=5, record=wrong)
    assert s3.list_objects_v2(Bucket=second_bucket).get("KeyCount", 0) == 0


def test_a_datablock_on_the_lts_is_never_overwritten_whatever_its_state(s3, bucket, lts_root):
    upload(s3, bucket, PID, {"a.bin": os.urandom(10_000), "b.bin": os.urandom(10_000)})
    (block,) = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB)
    path = tar_path(lts_root, block.archive_id)
    first = archive_datablock(s3, bucket, block, PosixLtsStore(lts_root))
    original = path.read_bytes()

    # archiving the same plan again refuses, whether the tar verifies, is damaged or lost its manifest
    with pytest.raises(DatablockExistsError, match="never overwritten"):
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root))
    path.write_bytes(original[:-2000])
    with pytest.raises(DatablockExistsError):
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root))
    assert path.read_bytes() == original[:-2000]
    path.write_bytes(original)
    lts_layout.manifest_path(path).unlink()
    with pytest.raises(DatablockExistsError):
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root))
    assert path.read_bytes() == original and first.dataFileList

    # plans give new datablocks names no file of the dataset has, so nothing existing is named
    on_lts = datablocks_on_lts(PosixLtsStore(lts_root), PID)
    (again,) = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB, on_lts.taken_indices)
    assert again.index == 1
    archive_datablock(s3, bucket, again, PosixLtsStore(lts_root))
    assert verify_datablock(PosixLtsStore(lts_root), again.archive_id).record().dataFileList == first.dataFileList


def test_files_whose_bytes_differ_from_the_listed_checksum_are_named_and_nothing_is_published(s3, bucket, lts_root):
    data = {"a.bin": os.urandom(1000), "big.bin": os.urandom(5 * MiB), "c.bin": os.urandom(1000)}
    upload(s3, bucket, PID, data)
    (block,) = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB)
    listed = {  # big.bin is streamed, the small ones fetched whole; md5 is computed beside the sha256
        "a.bin": ListedChecksum(algorithm="sha256", value=hashlib.sha256(data["a.bin"]).hexdigest()),
        "big.bin": ListedChecksum(algorithm="md5", value=hashlib.md5(b"other bytes").hexdigest()),
        "c.bin": ListedChecksum(algorithm="sha1", value="0" * 40),
    }
    with pytest.raises(ChecksumMismatchError) as e:
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root), listed=listed)
    assert e.value.files == [
        f"big.bin (SciCat lists md5 {listed['big.bin'].value}, "
        f"the landing zone has {hashlib.md5(data['big.bin']).hexdigest()})",
        f"c.bin (SciCat lists sha1 {'0' * 40}, the landing zone has {hashlib.sha1(data['c.bin']).hexdigest()})",
    ]
    assert list(lts_layout.datablocks_folder(lts_root, PID).iterdir()) == []

    listed["big.bin"] = ListedChecksum(algorithm="md5", value=hashlib.md5(data["big.bin"]).hexdigest().upper())
    listed["c.bin"] = ListedChecksum(algorithm="sha1", value=hashlib.sha1(data["c.bin"]).hexdigest())
    record = archive_datablock(s3, bucket, block, PosixLtsStore(lts_root), listed=listed)
    assert {f.path: f.chk for f in record.dataFileList} == {p: hashlib.sha256(d).hexdigest() for p, d in data.items()}


def test_user_errors(s3, bucket, lts_root):
    with pytest.raises(EmptyDatasetError, match="no files below"):
        list_dataset_files(s3, bucket, PID)

    # A name a tar member must not have. Not a '..' segment: SeaweedFS refuses such keys (AWS S3 stores them).
    unsafe = "sub/\x1b[2Jescape"
    s3.put_object(Bucket=bucket, Key=naming.landing_prefix(PID) + unsafe, Body=b"x")
    with pytest.raises(UnsafeFileNamesError, match="control characters"):
        list_dataset_files(s3, bucket, PID)
    s3.delete_object(Bucket=bucket, Key=naming.landing_prefix(PID) + unsafe)

    upload(s3, bucket, PID, {"a.bin": b"a", "b.bin": b"b"})
    (block,) = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB)
    s3.delete_object(Bucket=bucket, Key=naming.landing_prefix(PID) + "b.bin")
    with pytest.raises(MissingFilesError, match="b.bin") as e:
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root))
    assert e.value.files == ["b.bin"]
    folder = lts_layout.datablocks_folder(lts_root, PID)
    assert list(folder.iterdir()) == []  # the temporary file is gone, no datablock


def test_cleanup_helpers(s3, bucket, second_bucket, lts_root):
    other = "20.500.11935/other"
    upload(s3, bucket, PID, {"a.bin": b"a" * 100})
    upload(s3, bucket, other, {"a.bin": b"o" * 100})
    _, (record,) = archive_all(s3, bucket, PID, lts_root, target_bytes=100 * MiB)
    retrieve_datablock(PosixLtsStore(lts_root), record.archiveId, s3, second_bucket, file_timeout_s=5)
    s3.create_multipart_upload(Bucket=second_bucket, Key=naming.retrieval_prefix(PID) + "stale.tar")

    assert delete_retrieved(s3, second_bucket, PID) == 1
    assert s3.list_objects_v2(Bucket=second_bucket).get("KeyCount", 0) == 0
    assert multipart_uploads(s3, second_bucket) == []

    moved = [lts_root / key for key in set_aside_datablocks(PosixLtsStore(lts_root), [record.archiveId])]
    tar = tar_path(lts_root, record.archiveId)
    assert [p.name for p in moved] == [tar.name, lts_layout.manifest_path(tar).name]
    assert all(p.parent.parent.name == "discarded" and p.is_file() for p in moved)
    assert not tar.exists() and not lts_layout.manifest_path(tar).exists()

    assert delete_landing_zone_files(s3, bucket, PID) == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [naming.landing_prefix(other) + "a.bin"]


def test_leftovers_of_a_dead_run_are_removed_and_finished_work_kept(s3, bucket, second_bucket, lts_root):
    """What recover_job removes: half-written datablocks and unfinished uploads."""
    upload(s3, bucket, PID, {"a.bin": b"a" * 100})
    _, (record,) = archive_all(s3, bucket, PID, lts_root, target_bytes=100 * MiB)
    finished = tar_path(lts_root, record.archiveId)
    half_written = naming.partial_path(finished.with_name(naming.datablock_name(PID, 1)))
    half_written.write_bytes(b"half")
    retrieve_datablock(PosixLtsStore(lts_root), record.archiveId, s3, second_bucket, file_timeout_s=5)
    prefix = naming.retrieval_prefix(PID)
    s3.create_multipart_upload(Bucket=second_bucket, Key=prefix + "dead.tar")
    s3.create_multipart_upload(Bucket=second_bucket, Key=naming.retrieval_prefix("20.500.11935/other") + "live.tar")

    with PosixLtsStore(lts_root).lock_dataset(naming.datablocks_key(PID)) as removed:
        assert removed == [half_written.name]
    assert not half_written.exists() and finished.exists()
    assert abort_retrieval_uploads(s3, second_bucket, PID) == 1
    assert [u["Key"] for u in multipart_uploads(s3, second_bucket)] == [
        naming.retrieval_prefix("20.500.11935/other") + "live.tar"
    ]
    assert s3.list_objects_v2(Bucket=second_bucket)["KeyCount"] == 1  # the finished datablock stays


def test_presigned_url_is_signed_for_the_external_endpoint(s3, s3_endpoint, bucket):
    s3.put_object(Bucket=bucket, Key="openem-network/datasets/x%2Fy/datablocks/x%2Fy_00000.tar", Body=b"payload")
    port = urlsplit(s3_endpoint).port
    external = f"http://localhost:{port}"  # same server, the name users would reach it by
    url = presigned_get_url(
        external,
        S3_TEST_REGION,
        S3_TEST_CREDENTIALS,
        bucket,
        "openem-network/datasets/x%2Fy/datablocks/x%2Fy_00000.tar",
        3600,
    )
    assert url.startswith(external + "/") and "X-Amz-Expires=3600" in url
    assert httpx.get(url).content == b"payload"
    with pytest.raises(ValueError, match="7 days"):
        presigned_get_url(external, S3_TEST_REGION, S3_TEST_CREDENTIALS, bucket, "k", 7 * 24 * 3600 + 1)


def test_owner_and_mode_of_the_lts_settings_are_on_the_published_tar_and_manifest(s3, bucket, lts_root):
    upload(s3, bucket, PID, {"a.bin": b"a" * 1000})
    [block] = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 1 * MiB)
    if os.geteuid() == 0:
        ownership = FileOwnership(uid=1234, gid=2345, mode=0o440)
    else:  # an ordinary user can still choose the mode and one of its own groups
        ownership = FileOwnership(gid=os.getegid(), mode=0o440)
    record = archive_datablock(s3, bucket, block, PosixLtsStore(lts_root, ownership))

    tar = tar_path(lts_root, record.archiveId)
    for published in (tar, lts_layout.manifest_path(tar)):
        status = published.stat()
        owner = (status.st_uid if ownership.uid is not None else None, status.st_gid, stat.S_IMODE(status.st_mode))
        assert owner == (ownership.uid, ownership.gid, 0o440), published.name
    assert verify_datablock(PosixLtsStore(lts_root), record.archiveId).record() == record
