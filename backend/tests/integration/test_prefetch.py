"""Small landing-zone objects fetched ahead of the tar writer (real moto S3 over HTTP, real LTS folder).

Delays and connection failures are injected through botocore's own event hooks on a real client."""

import contextlib
import hashlib
import os
import tarfile
import threading
import time

import pytest
from botocore.exceptions import EndpointConnectionError

from archiver.packing import naming
from archiver.packing.archive import archive_datablock, verify_datablock
from archiver.packing.checking import READ_SIZE, check_datablock_stream
from archiver.packing.errors import IntegrityError, MissingFilesError
from archiver.packing.planning import list_dataset_files, plan_datablocks
from archiver.packing.records import read_manifest
from archiver.packing.sources import Prefetch, read_members
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout

pytestmark = pytest.mark.integration

PID = "20.500.11935/prefetch"
KiB = 1024
MiB = 1024 * KiB
FOUR_THREADS = Prefetch(threads=4, budget_bytes=MiB, small_object_bytes=MiB)


def upload(s3, bucket, files: dict[str, bytes]) -> list:
    for path, data in files.items():
        s3.put_object(Bucket=bucket, Key=naming.landing_prefix(PID) + path, Body=data)
    (block,) = plan_datablocks(PID, list_dataset_files(s3, bucket, PID), 1024 * MiB)
    return block


def on_get(s3, handler):
    """Call `handler(key)` before each GetObject request of this client, on the thread that sends it.
    Returns a function that removes the hook."""

    def hook(params, **_):
        handler(params["Key"])

    s3.meta.events.register("provide-client-params.s3.GetObject", hook)
    return lambda: s3.meta.events.unregister("provide-client-params.s3.GetObject", hook)


def prefetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("s3-get")]


def test_members_keep_the_planned_order_when_later_fetches_finish_first(s3, bucket, lts_root):
    files = {f"f{i:02d}.bin": os.urandom(1000 + 997 * i) for i in range(30)}
    files["f15_large.bin"] = os.urandom(300 * KiB)  # over small_object_bytes below: streamed in its turn
    block = upload(s3, bucket, files)
    first_key = block.files[0].key
    on_get(s3, lambda key: time.sleep(0.3) if key == first_key else None)  # the first object arrives last
    prefetch = Prefetch(threads=6, budget_bytes=256 * KiB, small_object_bytes=64 * KiB)

    with contextlib.closing(read_members(s3, bucket, PID, block.files, "sha256", prefetch)) as members:
        got = [(m.file.path, b"".join(m.chunks), m.checksum()) for m in members]
    assert [path for path, _, _ in got] == [f.path for f in block.files]
    for path, data, checksum in got:
        assert data == files[path] and checksum == hashlib.sha256(files[path]).hexdigest()

    record = archive_datablock(s3, bucket, block, PosixLtsStore(lts_root), prefetch=prefetch)
    verify_datablock(PosixLtsStore(lts_root), record.archiveId)
    with tarfile.open(lts_layout.datablock_path(lts_root, record.archiveId)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == [(f.path, files[f.path]) for f in block.files]


def test_objects_fetched_ahead_stay_within_the_byte_budget(s3, bucket):
    size = 100 * KiB
    block = upload(s3, bucket, {f"f{i:02d}.bin": os.urandom(size) for i in range(40)})
    index = {f.key: i for i, f in enumerate(block.files)}
    requested: set[int] = set()
    lock = threading.Lock()

    def note(key):
        with lock:
            requested.add(index[key])

    on_get(s3, note)
    budget = 350 * KiB
    prefetch = Prefetch(threads=8, budget_bytes=budget, small_object_bytes=size)

    most_ahead = 0
    with contextlib.closing(read_members(s3, bucket, PID, block.files, "sha256", prefetch)) as members:
        for i, member in enumerate(members):
            assert member.file == block.files[i]
            time.sleep(0.02)  # a slow writer: fetches run ahead as far as the budget lets them
            with lock:
                held = {j for j in requested if j >= i}
            assert len(held) * size <= budget, f"at member {i}, objects {sorted(held)} fetched ahead"
            most_ahead = max(most_ahead, len(held))
    assert most_ahead == budget // size  # it did fetch ahead, as far as allowed


@pytest.mark.parametrize("failure", ["object deleted", "connection lost"])
def test_a_failed_fetch_fails_the_datablock_and_leaves_nothing_behind(s3, bucket, lts_root, failure):
    files = {f"f{i:02d}.bin": os.urandom(20 * KiB) for i in range(50)}
    block = upload(s3, bucket, files)
    broken = block.files[25]
    if failure == "object deleted":
        s3.delete_object(Bucket=bucket, Key=broken.key)
        expected = pytest.raises(MissingFilesError, match=broken.path)
        repair = lambda: s3.put_object(Bucket=bucket, Key=broken.key, Body=files[broken.path])  # noqa: E731
    else:

        def lose_connection(key):
            if key == broken.key:
                raise EndpointConnectionError(endpoint_url="http://s3.invalid")

        repair = on_get(s3, lose_connection)
        expected = pytest.raises(EndpointConnectionError)

    with expected:
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root), prefetch=FOUR_THREADS)
    assert list(lts_layout.datablocks_folder(lts_root, PID).iterdir()) == []  # no tar, no .partial, no manifest
    assert prefetch_threads() == []  # no fetch is left running

    repair()  # the next run writes the datablock in full (nothing of the failed one was published)
    record = archive_datablock(s3, bucket, block, PosixLtsStore(lts_root), prefetch=FOUR_THREADS)
    assert verify_datablock(PosixLtsStore(lts_root), record.archiveId).record() == record


@pytest.mark.parametrize("size", [40 * KiB, 300 * KiB], ids=["fetched ahead", "streamed"])
@pytest.mark.parametrize("change", [-1, +1])
def test_an_object_that_changed_size_since_planning_fails_the_datablock(s3, bucket, lts_root, size, change):
    block = upload(s3, bucket, {"a.bin": os.urandom(1000), "b.bin": os.urandom(size), "c.bin": os.urandom(1000)})
    s3.put_object(Bucket=bucket, Key=block.files[1].key, Body=os.urandom(size + change * size // 2))
    prefetch = Prefetch(threads=2, small_object_bytes=64 * KiB)
    with pytest.raises(IntegrityError, match="'.*b.bin' changed while being archived"):
        archive_datablock(s3, bucket, block, PosixLtsStore(lts_root), prefetch=prefetch)
    assert list(lts_layout.datablocks_folder(lts_root, PID).iterdir()) == []


def test_verification_reads_the_tar_in_large_pieces_whatever_the_member_size(s3, bucket, lts_root):
    block = upload(s3, bucket, {f"f{i:03d}.bin": os.urandom(3 * KiB) for i in range(400)})
    record = archive_datablock(s3, bucket, block, PosixLtsStore(lts_root))
    path = lts_layout.datablock_path(lts_root, record.archiveId)
    manifest = read_manifest(PosixLtsStore(lts_root), record.archiveId)
    reads = []

    class CountingFile:
        def __init__(self, raw):
            self.raw = raw

        def read(self, size):
            reads.append(size)
            return self.raw.read(size)

    with open(path, "rb", buffering=0) as raw:
        problems = check_datablock_stream(
            CountingFile(raw), manifest.dataFileList, "sha256", manifest.chk, manifest.packedSize
        )
    assert problems == []
    assert set(reads) == {READ_SIZE} and len(reads) <= path.stat().st_size // READ_SIZE + 2
