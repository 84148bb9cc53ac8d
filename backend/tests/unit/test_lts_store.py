"""The LTS store's contract (storage/lts_store.py), checked on each implementation: publishing never replaces
a datablock, the dataset lock excludes a second holder and clears what dead writers left."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.config.settings import LtsSection
from archiver.storage.lts import AlreadyPublishedError, DatasetBusyError, FileOwnership
from archiver.storage.lts_store import LtsStore, open_store
from archiver.storage.posix_store import PosixLtsStore

FOLDER = "openem-network/datasets/x/datablocks"
KEY, MANIFEST = f"{FOLDER}/x_00000.tar", f"{FOLDER}/x_00000.manifest.json"


@pytest.fixture(params=["posix"])
def store(request, tmp_path) -> LtsStore:
    return open_store(LtsSection(backend=request.param, storage_root=tmp_path, free_space_percentage=0))


def publish(store: LtsStore, data: bytes, key: str = KEY, manifest_key: str = MANIFEST) -> None:
    def write(out) -> int:
        out.write(data)
        return len(data)

    store.publish_datablock(key, manifest_key, write, lambda size: f'{{"size": {size}}}')


def test_a_published_datablock_reads_back_with_its_manifest(store):
    publish(store, b"tar bytes")

    assert store.datablock_names(FOLDER) == ["x_00000.manifest.json", "x_00000.tar"]
    assert store.read_text(MANIFEST) == '{"size": 9}'
    store.wait_until_readable(KEY, 1)
    with store.open_datablock(KEY) as raw:
        assert raw.read() == b"tar bytes"


def test_publishing_never_replaces_a_datablock_or_its_manifest(store):
    publish(store, b"first")
    with pytest.raises(AlreadyPublishedError):
        publish(store, b"second")
    with pytest.raises(AlreadyPublishedError):  # a manifest alone takes the name too
        publish(store, b"second", key=f"{FOLDER}/x_00001.tar", manifest_key=MANIFEST)

    def taken_meanwhile(out) -> None:  # another writer takes the manifest's name while this one writes
        publish(store, b"other writer", key=f"{FOLDER}/x_00002.tar", manifest_key=f"{FOLDER}/x_00001.manifest.json")

    with pytest.raises(FileExistsError) as raised:
        store.publish_datablock(f"{FOLDER}/x_00001.tar", f"{FOLDER}/x_00001.manifest.json", taken_meanwhile, str)
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
        store.publish_datablock(KEY, MANIFEST, fails, str)
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
