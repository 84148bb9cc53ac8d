"""The LTS store's contract (storage/lts_store.py), checked on each implementation: publishing never replaces
a datablock, the dataset lock excludes a second holder and clears what dead writers left; reads at any offset, sizes,
listing, replacing text, setting aside (never replacing), removing folders, named locks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archiver.config.settings import LtsSection
from archiver.packing.records import Manifest
from archiver.storage.lts import AlreadyPublishedError, DatasetBusyError, FileOwnership, LtsWaitTimeout, ReadState
from archiver.storage.lts_store import LtsStore, open_store
from archiver.storage.posix_store import PosixLtsStore
from archiver.storage.s3 import S3Credentials
from archiver.storage.s3_store import S3ColdLtsStore

FOLDER = "openem-network/datasets/x/datablocks"
KEY, MANIFEST = f"{FOLDER}/x_00000.tar", f"{FOLDER}/x_00000.manifest.json"


@pytest.fixture(params=["posix"])
def store(request, tmp_path) -> LtsStore:
    return open_store(LtsSection(backend=request.param, storage_root=tmp_path, free_space_percentage=0))


def publish(store: LtsStore, data: bytes, key: str = KEY, manifest_key: str = MANIFEST) -> None:
    def write(out) -> int:
        out.write(data)
        return len(data)

    store.publish_datablock(key, manifest_key, write, lambda size, _stored: f'{{"size": {size}}}')


def test_a_published_datablock_reads_back_with_its_manifest(store):
    publish(store, b"tar bytes")

    assert store.datablock_names(FOLDER) == ["x_00000.manifest.json", "x_00000.tar"]
    assert store.read_text(MANIFEST) == '{"size": 9}'
    store.wait_until_readable(KEY, 1)
    with store.open_datablock(KEY) as raw:
        assert raw.read() == b"tar bytes"


def test_all_datablocks_wait_until_readable_each_reported_ready_in_turn_or_the_missing_one_named(store):
    other = f"{FOLDER}/x_00001.tar"
    publish(store, b"first")
    publish(store, b"second", other, f"{FOLDER}/x_00001.manifest.json")
    heard: list[dict] = []

    store.wait_until_all_readable([KEY, other], 1, heard.append)

    assert heard == [{KEY: ReadState.READY, other: ReadState.WAITING}, {KEY: ReadState.READY, other: ReadState.READY}]
    missing = f"{FOLDER}/x_00002.tar"
    with pytest.raises(LtsWaitTimeout, match="x_00002.tar"):
        store.wait_until_all_readable([KEY, missing], 0.2)


def test_publishing_never_replaces_a_datablock_or_its_manifest(store):
    publish(store, b"first")
    with pytest.raises(AlreadyPublishedError):
        publish(store, b"second")
    with pytest.raises(AlreadyPublishedError):  # a manifest alone takes the name too
        publish(store, b"second", key=f"{FOLDER}/x_00001.tar", manifest_key=MANIFEST)

    def taken_meanwhile(out) -> None:  # another writer takes the manifest's name while this one writes
        publish(store, b"other writer", key=f"{FOLDER}/x_00002.tar", manifest_key=f"{FOLDER}/x_00001.manifest.json")

    with pytest.raises(FileExistsError) as raised:
        store.publish_datablock(
            f"{FOLDER}/x_00001.tar",
            f"{FOLDER}/x_00001.manifest.json",
            taken_meanwhile,
            lambda written, _stored: str(written),
        )
    assert not isinstance(raised.value, AlreadyPublishedError)

    with store.open_datablock(KEY) as raw:
        assert raw.read() == b"first"
    assert store.read_text(MANIFEST) == '{"size": 5}'
    assert store.read_text(f"{FOLDER}/x_00001.manifest.json") == '{"size": 12}'
    assert store.datablock_names(FOLDER) == [
        "x_00000.manifest.json",
        "x_00000.tar",
        "x_00001.manifest.json",
        "x_00002.tar",
    ]  # the datablock that lost its manifest's name is not published, nothing half-written is left


def test_a_failed_write_publishes_nothing(store):
    def fails(out) -> None:
        out.write(b"half")
        raise OSError("landing zone gone")

    with pytest.raises(OSError, match="landing zone gone"):
        store.publish_datablock(KEY, MANIFEST, fails, lambda written, _stored: str(written))
    assert store.datablock_names(FOLDER) == []


def test_the_lock_excludes_a_second_holder_and_removes_dead_writers_leftovers(store, tmp_path):
    publish(store, b"finished")
    (tmp_path / FOLDER / "x_00001.tar.partial").write_bytes(b"a crashed run's")
    waits = []

    with store.lock_dataset(FOLDER) as removed:
        assert removed == ["x_00001.tar.partial"]
        with pytest.raises(DatasetBusyError, match="another process"):
            with store.lock_dataset(FOLDER, wait_s=0.3, on_wait=waits.append):
                pass
    assert len(waits) == 1
    with store.lock_dataset(FOLDER) as removed:  # free again once its holder let go
        assert removed == []
    assert store.datablock_names(FOLDER) == ["x_00000.manifest.json", "x_00000.tar"]


def test_the_posix_store_is_named_by_its_root_and_gives_files_the_settings_ownership(tmp_path):
    settings = LtsSection(storage_root=tmp_path, free_space_percentage=0, file_mode="0440")
    assert open_store(settings) == PosixLtsStore(tmp_path, FileOwnership(mode=0o440))
    assert open_store(settings).location == f"posix:{tmp_path}"
    publish(open_store(settings), b"read-only")
    assert (Path(tmp_path) / KEY).stat().st_mode & 0o777 == 0o440


def test_the_posix_store_refuses_keys_outside_its_root(tmp_path):
    with pytest.raises(ValueError, match="not a path inside"):
        PosixLtsStore(tmp_path).read_text("../elsewhere")


def test_a_datablock_reads_back_at_any_offset_with_cached_bytes_or_fresh(store):
    data = bytes(range(256)) * 40
    publish(store, data)
    for fresh in (True, False):
        with store.open_datablock(KEY, fresh=fresh) as raw:
            assert raw.seekable()
            raw.seek(1000)
            assert raw.read(24) == data[1000:1024]
            raw.seek(7)
            assert raw.read(3) == data[7:10]
            raw.seek(len(data) - 5)
            assert raw.read(100) == data[-5:]  # a read past the end stops there
    with pytest.raises(OSError):
        store.open_datablock(f"{FOLDER}/x_00009.tar", fresh=False)


def test_sizes_of_a_datablock_and_of_a_folder(store):
    publish(store, b"0123456789")
    assert store.size(KEY) == 10
    assert store.size(FOLDER) == 10 + len('{"size": 10}')  # all the folder holds
    with pytest.raises(FileNotFoundError):
        store.size(f"{FOLDER}/x_00009.tar")


def test_entries_name_files_and_folders_sorted_and_nothing_for_a_missing_folder(store):
    publish(store, b"0123456789")
    assert store.is_folder(FOLDER) and store.is_folder("openem-network/datasets/x")
    assert not store.is_folder(KEY) and not store.is_folder("openem-network/datasets/y")
    assert store.entries("openem-network/datasets/y") == [] and store.entries(KEY) == []

    entries = store.entries(FOLDER)
    assert [(e.name, e.is_folder, e.is_link, e.size) for e in entries] == [
        ("x_00000.manifest.json", False, False, len('{"size": 10}')),
        ("x_00000.tar", False, False, 10),
    ]
    assert all(e.modified.tzinfo is not None for e in entries)
    [datablocks] = [e for e in store.entries("openem-network/datasets/x") if e.name == "datablocks"]
    assert datablocks.is_folder and not datablocks.is_link and datablocks.size == 0


def test_written_text_replaces_what_is_there_and_leaves_no_temporary_file(store):
    publish(store, b"tar")
    record = f"{FOLDER}/x_00000.audit.json"
    store.write_text(record, '{"ok": false}')
    store.write_text(record, '{"ok": true}')
    assert store.read_text(record) == '{"ok": true}'
    assert store.datablock_names(FOLDER) == ["x_00000.audit.json", "x_00000.manifest.json", "x_00000.tar"]


def test_a_set_aside_moves_only_what_exists_and_never_replaces(store):
    publish(store, b"first")
    publish(store, b"second", key=f"{FOLDER}/x_00001.tar", manifest_key=f"{FOLDER}/x_00001.manifest.json")
    aside = "openem-network/datasets/x/discarded/20260101T000000.000000Z"

    moved = store.set_aside([KEY, MANIFEST, f"{FOLDER}/x_00009.tar"], aside)  # the last one is not there

    assert moved == [f"{aside}/x_00000.tar", f"{aside}/x_00000.manifest.json"]
    assert store.datablock_names(FOLDER) == ["x_00001.manifest.json", "x_00001.tar"]
    with store.open_datablock(f"{aside}/x_00000.tar") as raw:
        assert raw.read() == b"first"
    assert store.set_aside([KEY], aside) == []  # gone already: nothing to do

    publish(store, b"again")  # the same name written anew, then set aside into the same folder
    with pytest.raises(FileExistsError):
        store.set_aside([KEY], aside)
    with store.open_datablock(f"{aside}/x_00000.tar") as raw:
        assert raw.read() == b"first"  # what was set aside before stays
    with store.open_datablock(KEY) as raw:
        assert raw.read() == b"again"  # and what could not be moved stays where it was


def test_a_folder_is_removed_whole_or_only_when_empty(store):
    publish(store, b"tar")
    aside = "openem-network/datasets/x/discarded/20260101T000000.000000Z"
    store.set_aside([KEY, MANIFEST], aside)
    with pytest.raises(OSError):
        store.remove_folder(aside, only_if_empty=True)
    assert store.is_folder(aside)
    store.remove_folder(aside)
    assert not store.is_folder(aside) and store.entries("openem-network/datasets/x/discarded") == []
    store.remove_folder("openem-network/datasets/x/discarded", only_if_empty=True)
    assert [e.name for e in store.entries("openem-network/datasets/x")] == ["datablocks"]


class Busy(Exception):
    pass


def test_a_lock_excludes_a_second_holder_names_where_it_is_and_is_free_again_after(store):
    lock, waits = "openem-network/datasets/x/.retrieving.lock", []
    with store.lock(lock, 0, Busy):
        with pytest.raises(Busy) as raised:
            with store.lock(lock, 0.3, Busy, on_wait=lambda: waits.append(1), poll_s=0.1):
                pass
    assert len(waits) == 1
    assert "retrieving.lock" in str(raised.value)
    with store.lock(lock, 0, Busy):  # free again once its holder let go
        pass


def test_the_posix_store_follows_no_link_it_lists_as_one(tmp_path):
    store = PosixLtsStore(tmp_path)
    publish(store, b"0123456789")
    aside = tmp_path / "openem-network/datasets/x/discarded"
    aside.mkdir()
    (aside / "linked").symlink_to(tmp_path / FOLDER)
    (aside / "real").mkdir()
    (aside / "real" / "tar-link").symlink_to(tmp_path / KEY)

    [linked, real] = store.entries("openem-network/datasets/x/discarded")
    assert (linked.name, linked.is_folder, linked.is_link) == ("linked", True, True)
    assert (real.name, real.is_folder, real.is_link) == ("real", True, False)
    assert store.size("openem-network/datasets/x/discarded/real") == len(str(tmp_path / KEY))  # the link itself
    store.remove_folder("openem-network/datasets/x/discarded/real")
    assert (tmp_path / KEY).read_bytes() == b"0123456789"  # what the link pointed to stays


def test_lts_backend_s3_builds_the_cold_s3_store_from_its_settings(tmp_path):
    settings = LtsSection(
        backend="s3",
        storage_root=tmp_path,
        free_space_percentage=0,
        s3_endpoint="http://127.0.0.1:9",
        s3_bucket="facility-lts",
        s3_prefix="archive/",
        storage_class="GLACIER",
        restore_tier="Expedited",
        restore_days=2,
        restore_timeout_hours=0.5,
    )
    store = open_store(settings, S3Credentials("key", "secret"))
    assert isinstance(store, S3ColdLtsStore)
    assert (store.bucket, store.storage_class, store.location) == (
        "facility-lts",
        "GLACIER",
        "s3://facility-lts/archive",
    )
    assert (store.restore.tier, store.restore.days, store.restore.timeout_s) == ("Expedited", 2, 1800)
    assert (store.restore.first_poll_s, store.restore.max_poll_s) == (18, 90)  # within a short deadline


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"backend": "s3"}, "LTS_S3_ENDPOINT and LTS_S3_BUCKET"),
        ({"restore_tier": "Expedited"}, 'not offered for LTS_STORAGE_CLASS "DEEP_ARCHIVE"'),
    ],
)
def test_the_cold_s3_settings_refuse_what_cannot_work(tmp_path, values, problem):
    with pytest.raises(ValueError, match=problem):
        LtsSection(storage_root=tmp_path, free_space_percentage=0, **values)


def test_the_posix_store_verifies_by_reading_the_datablock_back(store):
    publish(store, b"tar bytes")
    read = []

    def check(raw) -> list[str]:
        read.append(raw.read())
        return ["what the check found"]

    assert store.verification_reads and store.space_is_limited
    assert store.verify_datablock(KEY, 9, None, check, timeout_s=1) == ["what the check found"]
    assert read == [b"tar bytes"]
    [unreadable] = store.verify_datablock(f"{FOLDER}/x_00009.tar", 9, None, check)
    assert unreadable.startswith("tar file unreadable") and len(read) == 1


def test_a_manifest_without_a_stored_checksum_is_written_as_before():
    manifest = Manifest(
        datasetId="p", archiveId="a", size=0, packedSize=0, chkAlg="sha256", dataFileList=[], chk="c", created="t"
    )
    assert "storedChecksum" not in json.loads(manifest.to_json())
    assert json.loads(manifest.model_copy(update={"storedChecksum": "x-2"}).to_json())["storedChecksum"] == "x-2"
