"""Where the POSIX LTS store (storage/posix_store.py) keeps a dataset's things, as paths under the LTS root: for
tests that look at, age or damage the files themselves. The archiver names them by key (packing/naming.py)."""

from __future__ import annotations

from pathlib import Path

from archiver.packing import naming


def dataset_folder(lts_root: Path | str, pid: str) -> Path:
    return Path(lts_root) / naming.dataset_key(pid)


def datablocks_folder(lts_root: Path | str, pid: str) -> Path:
    return Path(lts_root) / naming.datablocks_key(pid)


def datablock_path(lts_root: Path | str, archive_id: str) -> Path:
    return Path(lts_root) / naming.check_archive_id(archive_id)


def manifest_path(tar: Path) -> Path:
    return tar.with_name(naming.manifest_id(tar.name))
