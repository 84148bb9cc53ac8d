"""LTS housekeeping on a real folder: setting datablocks aside, pruning discarded/, leftovers of dead writers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archiver.packing import naming
from archiver.packing.cleanup import prune_discarded, set_aside_datablocks
from archiver.storage.lts import DatasetBusyError
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def datablock(lts_root: Path, pid: str, index: int, size: int = 1000) -> str:
    archive_id = naming.archive_id(pid, index)
    tar = lts_layout.datablock_path(lts_root, archive_id)
    tar.parent.mkdir(parents=True, exist_ok=True)
    tar.write_bytes(b"t" * size)
    lts_layout.manifest_path(tar).write_text("{}")
    return archive_id


def discarded(lts_root: Path, pid: str, age: timedelta, size: int = 100) -> Path:
    folder = lts_layout.dataset_folder(lts_root, pid) / "discarded" / (NOW - age).strftime("%Y%m%dT%H%M%S.%fZ")
    folder.mkdir(parents=True)
    (folder / "x_00000.tar").write_bytes(b"d" * size)
    (folder / "x_00000.manifest.json").write_bytes(b"m" * 10)
    return folder


def test_set_aside_moves_only_the_named_datablocks(tmp_path):
    pid = "20.500.11935/set-aside"
    keep, bad = datablock(tmp_path, pid, 0), datablock(tmp_path, pid, 1)

    moved = [tmp_path / key for key in set_aside_datablocks(PosixLtsStore(tmp_path), [bad])]

    kept_tar = lts_layout.datablock_path(tmp_path, keep)
    assert kept_tar.is_file() and lts_layout.manifest_path(kept_tar).is_file()
    assert not lts_layout.datablock_path(tmp_path, bad).exists()
    assert sorted(p.name for p in moved) == sorted([Path(bad).name, lts_layout.manifest_path(Path(bad)).name])
    [folder] = {p.parent for p in moved}
    assert folder.parent == lts_layout.dataset_folder(tmp_path, pid) / "discarded"
    assert all(p.is_file() for p in moved)
    assert set_aside_datablocks(PosixLtsStore(tmp_path), [bad]) == []  # already gone: nothing to do


def test_set_aside_refuses_ids_outside_datablocks(tmp_path):
    from archiver.packing.errors import InvalidNameError

    with pytest.raises(InvalidNameError, match="archiveId"):
        set_aside_datablocks(PosixLtsStore(tmp_path), ["openem-network/datasets/x/discarded/x_00000.tar"])


def test_prune_deletes_only_old_discarded_folders_and_never_datablocks(tmp_path):
    old_pid, new_pid = "20.500.11935/old", "20.500.11935/new"
    live = [datablock(tmp_path, old_pid, 0), datablock(tmp_path, new_pid, 0)]
    old = discarded(tmp_path, old_pid, timedelta(days=31), size=5000)
    older = discarded(tmp_path, new_pid, timedelta(days=40), size=7000)
    recent = discarded(tmp_path, new_pid, timedelta(days=29))

    preview = prune_discarded(PosixLtsStore(tmp_path), 30, dry_run=True, now=NOW)
    assert [tmp_path / f.key for f in preview] == [older, old]
    assert old.exists() and older.exists()

    pruned = prune_discarded(PosixLtsStore(tmp_path), 30, now=NOW)

    assert [(tmp_path / f.key, f.size_bytes) for f in pruned] == [(older, 7010), (old, 5010)]
    assert not old.exists() and not older.exists() and recent.exists()
    assert not old.parent.exists()  # an emptied discarded/ goes too
    for archive_id in live:
        assert lts_layout.datablock_path(tmp_path, archive_id).is_file()
    assert prune_discarded(PosixLtsStore(tmp_path), 30, now=NOW) == []


def test_prune_follows_no_symlink_and_dates_odd_names_by_mtime(tmp_path):
    pid = "20.500.11935/links"
    target = datablock(tmp_path, pid, 0)
    bin_ = lts_layout.dataset_folder(tmp_path, pid) / "discarded"
    bin_.mkdir(parents=True)
    (bin_ / "20250101T000000.000000Z").symlink_to(lts_layout.datablocks_folder(tmp_path, pid))
    odd = bin_ / "by-hand"
    odd.mkdir()
    (odd / "f").write_bytes(b"1")
    old_time = (NOW - timedelta(days=100)).timestamp()
    os.utime(odd, (old_time, old_time))

    pruned = prune_discarded(PosixLtsStore(tmp_path), 30, now=NOW)

    assert [tmp_path / f.key for f in pruned] == [odd]
    assert lts_layout.datablock_path(tmp_path, target).is_file()


def test_prune_refuses_a_negative_age(tmp_path):
    with pytest.raises(ValueError, match="-1"):
        prune_discarded(PosixLtsStore(tmp_path), -1)


def lock(lts_root: Path, pid: str):
    return PosixLtsStore(lts_root).lock_dataset(naming.datablocks_key(pid))


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from archiver.packing import naming
    from archiver.storage.posix_store import PosixLtsStore
    with PosixLtsStore(Path(sys.argv[1])).lock_dataset(naming.datablocks_key(sys.argv[2])) as removed:
        Path(sys.argv[3]).write_bytes(b"being written")
        print("removed", *removed, flush=True)
        time.sleep(60)
""")


def test_partial_files_of_dead_writers_are_removed_never_a_live_writers(tmp_path):
    pid = "20.500.11935/partials"
    folder = lts_layout.datablocks_folder(tmp_path, pid)
    folder.mkdir(parents=True)
    dead_runs = folder / "x_00000.tar.partial"
    dead_runs.write_bytes(b"half")
    live = folder / "x_00002.tar.partial"
    finished = Path(lts_layout.datablock_path(tmp_path, datablock(tmp_path, pid, 1)))

    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path), pid, str(live)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().split() == ["removed", dead_runs.name]
        assert not dead_runs.exists()
        with pytest.raises(DatasetBusyError, match="another process"):
            with lock(tmp_path, pid):
                pass
        assert live.read_bytes() == b"being written"  # a live writer's file is never touched
    finally:
        writer.kill()  # the writer dies mid-write: its .partial is left behind
        writer.wait()

    with lock(tmp_path, pid) as removed:
        assert removed == [live.name]
        assert not live.exists()
        assert finished.is_file()
    with lock(tmp_path, pid) as removed:  # released on exit
        assert removed == []


def test_lock_is_released_when_the_block_raises(tmp_path):
    pid = "20.500.11935/raises"
    with pytest.raises(RuntimeError):
        with lock(tmp_path, pid):
            raise RuntimeError("boom")
    with lock(tmp_path, pid) as removed:  # would raise DatasetBusyError if still held
        assert removed == []


def test_prune_keeps_the_only_copy_of_a_registered_datablock(tmp_path):
    pid = "20.500.11935/registered"
    moved_aside = datablock(tmp_path, pid, 0)  # registered, then (wrongly) set aside: its only copy is in discarded/
    still_there = datablock(tmp_path, pid, 1)  # registered and in place: a copy in discarded/ is just a copy
    holding_only_copy = discarded(tmp_path, pid, timedelta(days=60))
    lts_layout.datablock_path(tmp_path, moved_aside).rename(holding_only_copy / Path(moved_aside).name)
    holding_a_copy = discarded(tmp_path, pid, timedelta(days=61))
    (holding_a_copy / Path(still_there).name).write_bytes(b"copy")
    asked = []

    found = prune_discarded(
        PosixLtsStore(tmp_path), 30, now=NOW, registered=lambda p: asked.append(p) or [moved_aside, still_there]
    )

    assert asked == [pid]
    assert [(tmp_path / f.key, f.kept_because) for f in found] == [
        (holding_a_copy, None),
        (holding_only_copy, f"only copy of registered datablock(s) {Path(moved_aside).name}"),
    ]
    assert holding_only_copy.exists() and not holding_a_copy.exists()
