"""The cold S3 LTS store (storage/s3_store.py) against the cold tier stand-in (devtools/cold_s3.py) in front of
the tests' SeaweedFS: datablocks are written in DEEP_ARCHIVE, refused until restored, restored once however many
read them, and never replaced."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import PurePosixPath

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from archiver.flows.lts_tasks import verify_stored_datablock
from archiver.packing import naming
from archiver.packing.archive import archive_datablock, datablocks_on_lts, reread_datablock, verify_datablock
from archiver.packing.errors import DatablockExistsError, IntegrityError
from archiver.packing.planning import list_dataset_files, plan_datablocks
from archiver.packing.records import read_manifest
from archiver.storage.lts import DatasetBusyError, LtsWaitTimeout
from archiver.storage.s3 import MultipartUpload, s3_client
from archiver.storage.s3_lease_lock import lease_lock
from archiver.storage.s3_store import RestorePolicy, S3ColdLtsStore
from tests.conftest import S3_TEST_CREDENTIALS, S3_TEST_REGION

pytestmark = pytest.mark.integration

PID = "20.500.11935/cold-1"
MiB = 1024 * 1024
FAST_POLLS = RestorePolicy(tier="Bulk", days=1, timeout_s=30, first_poll_s=0.1, max_poll_s=0.3)


def cold_store(proxy, bucket: str, restore: RestorePolicy = FAST_POLLS) -> S3ColdLtsStore:
    client = s3_client(proxy.url, S3_TEST_REGION, S3_TEST_CREDENTIALS)
    return S3ColdLtsStore(client, bucket, "lts", "DEEP_ARCHIVE", restore, part_size=5 * MiB)


def publish_bytes(store: S3ColdLtsStore, key: str, data: bytes, during=None) -> None:
    def write(out):
        out.write(data)
        if during:
            during()
        return len(data)

    store.publish_datablock(key, key + ".manifest.json", write, lambda size, _stored: f'{{"size": {size}}}')


def restore_requests(proxy, bucket: str, key: str) -> int:
    return sum(1 for b, k, _ in proxy.tier.restore_requests if (b, k) == (bucket, f"lts/{key}"))


@pytest.fixture
def lts_bucket(second_bucket) -> str:
    return second_bucket


def test_a_datablock_is_written_cold_then_restored_and_verified(s3, bucket, cold_s3_proxy, lts_bucket):
    files = {"raw/big.mrc": os.urandom(6 * MiB + 5), "notes.txt": b"cold"}
    for path, data in files.items():
        s3.put_object(Bucket=bucket, Key=naming.landing_prefix(PID) + path, Body=data)
    store = cold_store(cold_s3_proxy, lts_bucket)
    [block] = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB)

    record = archive_datablock(s3, bucket, block, store)

    tar = s3.head_object(Bucket=lts_bucket, Key=f"lts/{block.archive_id}", ChecksumMode="ENABLED")
    assert tar["StorageClass"] == "DEEP_ARCHIVE" and tar["ContentLength"] == record.packedSize
    assert tar["ETag"].endswith('-2"')  # two parts of 5 MiB and the rest, each sent with its SHA-256
    manifest = s3.head_object(Bucket=lts_bucket, Key=f"lts/{naming.manifest_id(block.archive_id)}")
    assert manifest.get("StorageClass", "STANDARD") == "STANDARD"
    assert [m.archiveId for m in datablocks_on_lts(store, PID).manifests] == [block.archive_id]
    assert store.location == f"s3://{lts_bucket}/lts"
    assert read_manifest(store, block.archive_id).storedChecksum == tar["ChecksumSHA256"]  # S3's, `<base64>-2`

    verified = verify_stored_datablock(store, block.archive_id, file_timeout_s=1)  # S3's checksum, no restore

    assert verified.record() == record
    assert cold_s3_proxy.tier.restore_requests == []
    with pytest.raises(OSError, match="InvalidObjectState"):
        store.open_datablock(block.archive_id).read(1)  # still frozen: nothing read it
    assert reread_datablock(store, block.archive_id, file_timeout_s=1).record() == record  # restored, read
    assert restore_requests(cold_s3_proxy, lts_bucket, block.archive_id) == 1
    with pytest.raises(DatablockExistsError):
        archive_datablock(s3, bucket, block, store)


def test_a_manifest_without_a_stored_checksum_is_verified_by_reading_back(s3, bucket, cold_s3_proxy, lts_bucket):
    """A manifest written before the store recorded its checksum: verification restores and reads, never
    passes on a checksum it does not have."""
    s3.put_object(Bucket=bucket, Key=naming.landing_prefix(PID) + "a.bin", Body=os.urandom(MiB))
    store = cold_store(cold_s3_proxy, lts_bucket)
    [block] = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB)
    archive_datablock(s3, bucket, block, store)
    manifest_key = f"lts/{naming.manifest_id(block.archive_id)}"
    older = read_manifest(store, block.archive_id).model_copy(update={"storedChecksum": None})
    s3.put_object(Bucket=lts_bucket, Key=manifest_key, Body=older.to_json().encode())
    assert "storedChecksum" not in s3.get_object(Bucket=lts_bucket, Key=manifest_key)["Body"].read().decode()

    with pytest.raises(OSError, match="InvalidObjectState"):
        verify_datablock(store, block.archive_id)  # no wait asked: the frozen object is refused
    verify_stored_datablock(store, block.archive_id, file_timeout_s=1)

    assert restore_requests(cold_s3_proxy, lts_bucket, block.archive_id) == 1


def rewrite_plainly(s3, bucket: str, key: str, data: bytes) -> None:
    """The object replaced in the bucket behind the store's back, with no checksum (as an old tool would)."""
    s3.put_object(Bucket=bucket, Key=key, Body=data, StorageClass="DEEP_ARCHIVE")


def rewrite_in_parts(s3, bucket: str, key: str, data: bytes) -> None:
    """The object replaced in the bucket behind the store's back, in parts with their SHA-256 as the store writes."""
    with MultipartUpload(s3, bucket, key, 5 * MiB, storage_class="DEEP_ARCHIVE", sha256_parts=True) as upload:
        upload.write(data)
        upload.complete()


def truncate(s3, bucket: str, key: str, data: bytes) -> None:
    rewrite_in_parts(s3, bucket, key, data[: len(data) - 512])


CORRUPTIONS = {  # how the stored bytes come to differ, and what verification says
    "one byte, no checksum": (rewrite_plainly, "keeps no SHA-256"),
    "one byte, new checksum": (rewrite_in_parts, "the one computed while writing it"),
    "512 bytes short": (truncate, "the manifest records"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_datablock_whose_stored_bytes_differ_fails_verification_naming_it_without_a_restore(
    s3, bucket, cold_s3_proxy, lts_bucket, corruption
):
    s3.put_object(Bucket=bucket, Key=naming.landing_prefix(PID) + "raw/big.mrc", Body=os.urandom(6 * MiB))
    store = cold_store(cold_s3_proxy, lts_bucket)
    [block] = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 100 * MiB)
    archive_datablock(s3, bucket, block, store)
    key = f"lts/{block.archive_id}"
    stored = bytearray(s3.get_object(Bucket=lts_bucket, Key=key)["Body"].read())  # past the stand-in
    stored[3 * MiB] ^= 0x01
    rewrite, says = CORRUPTIONS[corruption]
    rewrite(s3, lts_bucket, key, bytes(stored))

    with pytest.raises(IntegrityError, match=says) as failed:
        verify_stored_datablock(store, block.archive_id, file_timeout_s=1)

    assert block.archive_id in str(failed.value) and f"s3://{lts_bucket}/{key}" in str(failed.value)
    assert cold_s3_proxy.tier.restore_requests == []


def test_publishing_never_replaces_a_datablock_or_manifest(s3, bucket, cold_s3_proxy, lts_bucket):
    store = cold_store(cold_s3_proxy, lts_bucket)
    publish_bytes(store, "ds/a.tar", b"first")
    with pytest.raises(FileExistsError, match="already published"):
        publish_bytes(store, "ds/a.tar", b"second")

    # Taken while it was written (another writer without the lock): the conditional writes refuse.
    def taken_tar():
        s3.put_object(Bucket=lts_bucket, Key="lts/ds/b.tar", Body=b"other writer")

    with pytest.raises(FileExistsError, match="taken while it was written"):
        publish_bytes(store, "ds/b.tar", b"mine", during=taken_tar)

    def taken_manifest():
        s3.put_object(Bucket=lts_bucket, Key="lts/ds/c.tar.manifest.json", Body=b"other writer")

    with pytest.raises(FileExistsError, match="taken while it was written"):
        publish_bytes(store, "ds/c.tar", b"mine", during=taken_manifest)

    assert s3.get_object(Bucket=lts_bucket, Key="lts/ds/b.tar")["Body"].read() == b"other writer"
    assert s3.get_object(Bucket=lts_bucket, Key="lts/ds/c.tar.manifest.json")["Body"].read() == b"other writer"
    assert "lts/ds/c.tar" not in {o["Key"] for o in s3.list_objects_v2(Bucket=lts_bucket)["Contents"]}
    assert s3.list_multipart_uploads(Bucket=lts_bucket).get("Uploads", []) == []


def test_a_read_waits_for_a_slow_restore_and_then_reads(cold_s3_proxy, lts_bucket):
    cold_s3_proxy.tier.restore_delay_s = 1.5
    store = cold_store(cold_s3_proxy, lts_bucket)
    data = os.urandom(300_000)
    publish_bytes(store, "ds/slow.tar", data)

    started = time.monotonic()
    store.wait_until_readable("ds/slow.tar", timeout_s=0.01)  # LTS_FILE_TIMEOUT_S is a mount's, not a restore's
    assert time.monotonic() - started >= 1.4

    with store.open_datablock("ds/slow.tar") as raw:
        raw.seek(200_000)
        assert raw.read(10) == data[200_000:200_010]
        raw.seek(0)
        assert raw.read() == data


def test_a_restore_that_never_finishes_fails_at_the_deadline_naming_the_datablock(cold_s3_proxy, lts_bucket):
    cold_s3_proxy.tier.restores_fail = True
    store = cold_store(cold_s3_proxy, lts_bucket, RestorePolicy("Bulk", 1, timeout_s=1.0, first_poll_s=0.1))
    publish_bytes(store, "ds/frozen.tar", b"x")

    started = time.monotonic()
    with pytest.raises(LtsWaitTimeout, match=rf"s3://{lts_bucket}/lts/ds/frozen.tar is still frozen in DEEP_ARCHIVE"):
        store.wait_until_readable("ds/frozen.tar", timeout_s=600)
    assert 0.9 <= time.monotonic() - started < 3
    assert restore_requests(cold_s3_proxy, lts_bucket, "ds/frozen.tar") == 1


def test_two_concurrent_readers_of_one_datablock_cause_one_restore_request(cold_s3_proxy, lts_bucket):
    cold_s3_proxy.tier.restore_latency_s = 0.3  # the second reader looks while the first one's request is under way
    publish_bytes(cold_store(cold_s3_proxy, lts_bucket), "ds/shared.tar", b"shared")
    readers = [cold_store(cold_s3_proxy, lts_bucket) for _ in range(2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def read(store):
        start.wait()
        try:
            store.wait_until_readable("ds/shared.tar", timeout_s=1)
            with store.open_datablock("ds/shared.tar") as raw:
                assert raw.read() == b"shared"
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=read, args=(store,)) for store in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert restore_requests(cold_s3_proxy, lts_bucket, "ds/shared.tar") == 1


def test_setting_aside_restores_copies_and_removes_never_replacing(s3, cold_s3_proxy, lts_bucket):
    store = cold_store(cold_s3_proxy, lts_bucket)
    publish_bytes(store, "ds/blocks/x.tar", b"failed verification")

    moved = store.set_aside(["ds/blocks/x.tar", "ds/blocks/x.tar.manifest.json", "ds/blocks/gone.tar"], "ds/d/1")

    assert moved == ["ds/d/1/x.tar", "ds/d/1/x.tar.manifest.json"]  # what is not there is skipped
    assert store.datablock_names("ds/blocks") == []
    assert not store.is_folder("ds/blocks") and store.is_folder("ds/d")
    assert restore_requests(cold_s3_proxy, lts_bucket, "ds/blocks/x.tar") == 1  # S3 copies it once restored
    assert s3.head_object(Bucket=lts_bucket, Key="lts/ds/d/1/x.tar")["StorageClass"] == "DEEP_ARCHIVE"
    store.wait_until_readable("ds/d/1/x.tar", 1)
    with store.open_datablock("ds/d/1/x.tar") as raw:
        assert raw.read() == b"failed verification"

    publish_bytes(store, "ds/blocks/x.tar", b"second")
    with pytest.raises(FileExistsError, match="already set aside"):
        store.set_aside(["ds/blocks/x.tar"], "ds/d/1")
    assert store.datablock_names("ds/blocks") == ["x.tar", "x.tar.manifest.json"]


def test_the_dataset_lock_excludes_a_second_writer_and_clears_dead_writers_uploads(s3, cold_s3_proxy, lts_bucket):
    store = cold_store(cold_s3_proxy, lts_bucket)
    dead = s3.create_multipart_upload(Bucket=lts_bucket, Key="lts/ds/blocks/d_1.tar")["UploadId"]
    assert store.datablock_names("ds/blocks") == ["d_1.tar.partial"]

    with store.lock_dataset("ds/blocks") as removed:
        assert removed == ["d_1.tar.partial"]
        waited: list[str] = []
        with pytest.raises(DatasetBusyError, match=rf"s3://{lts_bucket}/lts/ds/.archiving.lock"):
            with store.lock_dataset("ds/blocks", wait_s=0.5, on_wait=waited.append):
                pass
        assert waited == [f"s3://{lts_bucket}/lts/ds/.archiving.lock"]
    assert all(u["UploadId"] != dead for u in s3.list_multipart_uploads(Bucket=lts_bucket).get("Uploads", []))

    # A holder that died: its lease ended, the next writer takes the lock.
    s3.put_object(Bucket=lts_bucket, Key="lts/ds/.archiving.lock", Body=b'{"holder": "dead", "expires": 0}')
    with store.lock_dataset("ds/blocks", wait_s=0) as removed:
        assert removed == []
    assert "Contents" not in s3.list_objects_v2(Bucket=lts_bucket, Prefix="lts/ds/.archiving.lock")


def test_a_held_lease_is_renewed_so_it_outlives_its_term(s3, lts_bucket):
    def busy():
        return DatasetBusyError("busy")

    with lease_lock(s3, lts_bucket, "renewed.lock", 0, busy, lease_s=0.6):
        time.sleep(1.5)  # over two terms: only renewals keep it
        with pytest.raises(DatasetBusyError), lease_lock(s3, lts_bucket, "renewed.lock", 0, busy, lease_s=0.6):
            pass
    with lease_lock(s3, lts_bucket, "renewed.lock", 0, busy, lease_s=0.6):  # given back on leaving
        pass
    assert "Contents" not in s3.list_objects_v2(Bucket=lts_bucket, Prefix="renewed.lock")


def test_write_once_holds_through_rivals_crashes_and_lock_takeovers(s3, cold_s3_proxy, lts_bucket):
    """Random sequences of publishes, rival writers racing a publish, writers that die mid-upload or between
    manifest and tar, and dataset-lock takeovers: a published datablock's bytes never change, a taken name is
    never published again, and the lock's holder clears exactly the dead writers' uploads."""
    names = st.sampled_from([f"ds/blocks/b_{i}.tar" for i in range(3)])
    payloads = st.binary(min_size=1, max_size=64)

    class WriteOnce(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.prefix = f"sm-{uuid.uuid4().hex[:8]}"
            self.store = S3ColdLtsStore(
                s3_client(cold_s3_proxy.url, S3_TEST_REGION, S3_TEST_CREDENTIALS), lts_bucket, self.prefix
            )
            self.rival = S3ColdLtsStore(s3, lts_bucket, self.prefix)
            self.published: dict[str, bytes] = {}  # name -> bytes of its tar
            self.taken: set[str] = set()  # names with a tar or a manifest
            self.dead_uploads: set[str] = set()

        def _publish(self, store, name, data, during=None) -> bool:
            try:
                publish_bytes(store, name, data, during)
            except FileExistsError:
                assert name in self.taken
                return False
            assert name not in self.taken
            self.published[name] = data
            self.taken.add(name)
            return True

        @rule(name=names, data=payloads)
        def publish(self, name, data):
            self._publish(self.store, name, data)

        @rule(name=names, ours=payloads, theirs=payloads)
        def a_rival_publishes_meanwhile(self, name, ours, theirs):
            free = name not in self.taken
            rival_won: list[bool] = []
            published = self._publish(
                self.store, name, ours, during=lambda: rival_won.append(self._publish(self.rival, name, theirs))
            )
            assert not (published and any(rival_won))
            assert not published or not free or rival_won == [False]

        @rule(name=names, data=payloads)
        def a_writer_dies_mid_upload(self, name, data):
            key = f"{self.prefix}/{name}"
            upload = s3.create_multipart_upload(Bucket=lts_bucket, Key=key, StorageClass="DEEP_ARCHIVE")["UploadId"]
            s3.upload_part(Bucket=lts_bucket, Key=key, UploadId=upload, PartNumber=1, Body=data)
            self.dead_uploads.add(PurePosixPath(name).name + ".partial")

        @rule(name=names)
        def a_writer_dies_between_manifest_and_tar(self, name):
            if name in self.taken:
                return
            s3.put_object(Bucket=lts_bucket, Key=f"{self.prefix}/{name}.manifest.json", Body=b"{}")
            self.taken.add(name)

        @rule()
        def the_next_writer_takes_the_dataset_lock(self):
            with self.store.lock_dataset("ds/blocks") as removed:
                assert set(removed) == self.dead_uploads
            self.dead_uploads.clear()

        @invariant()
        def published_bytes_never_change(self):
            stored = {
                obj["Key"].removeprefix(f"{self.prefix}/")
                for obj in s3.list_objects_v2(Bucket=lts_bucket, Prefix=f"{self.prefix}/ds/blocks/").get("Contents", [])
            }
            tars = {name for name in stored if name.endswith(".tar")}
            assert tars == set(self.published)
            for name, data in self.published.items():
                assert s3.get_object(Bucket=lts_bucket, Key=f"{self.prefix}/{name}")["Body"].read() == data
                manifest = s3.get_object(Bucket=lts_bucket, Key=f"{self.prefix}/{name}.manifest.json")["Body"].read()
                assert manifest == f'{{"size": {len(data)}}}'.encode()
            assert {name.removesuffix(".manifest.json") for name in stored - tars} == self.taken

    run_state_machine_as_test(
        WriteOnce, settings=settings(max_examples=8, stateful_step_count=12, deadline=None, database=None)
    )
