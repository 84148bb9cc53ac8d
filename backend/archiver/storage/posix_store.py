"""The LTS as a POSIX filesystem (a mount, tape possibly behind it): the LtsStore of LTS_BACKEND "posix".

A key is a path relative to the root. A datablock is written under a temporary name (`.partial`), fsynced and
renamed, its manifest first, so a file under a final name is always complete; a final name is never replaced.
A dataset's writers exclude each other with an `flock` on `.archiving.lock` beside its datablocks folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from archiver.storage.lts import (
    PARTIAL_SUFFIX,
    AlreadyPublishedError,
    DatasetBusyError,
    FileOwnership,
    drop_page_cache,
    exclusive_flock,
    fsync_dir,
    partial_path,
    rename_no_replace,
    wait_until_readable,
    write_json_durably,
)

LOCK_FILE_NAME = ".archiving.lock"
T = TypeVar("T")


@dataclass(frozen=True)
class PosixLtsStore:
    """Datablocks and manifests under `root`; they get `ownership` before they are published."""

    root: Path
    ownership: FileOwnership = FileOwnership()

    @property
    def location(self) -> str:
        return f"posix:{self.root}"

    @contextlib.contextmanager
    def lock_dataset(
        self, folder: str, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[list[str]]:
        """Hold the dataset's write lock while its datablocks are written; yields the names of the leftover
        `.partial` files of dead runs, removed on entry.

        The lock is an exclusive `flock` on `{dataset}/.archiving.lock`, held for the whole `with` block.
        The kernel drops it when its holder dies, so whoever gets it knows no live writer is left and
        every `.partial` file is a dead run's. While another process holds it, waits up to `wait_s` (a
        frozen run that wakes up gives it back once it sees it no longer owns its job), calling `on_wait`
        once with the lock's path; then raises DatasetBusyError."""
        datablocks = self._path(folder)
        datablocks.mkdir(parents=True, exist_ok=True)
        lock_path = datablocks.parent / LOCK_FILE_NAME

        def busy() -> DatasetBusyError:
            return DatasetBusyError(
                f"another process is writing the dataset's datablocks (it holds {lock_path}"
                + (f" and kept it for {wait_s:.0f} s" if wait_s else "")
                + "); wait for that run to end before archiving the dataset again"
            )

        with exclusive_flock(lock_path, wait_s, busy, (lambda: on_wait(str(lock_path))) if on_wait else None):
            yield _remove_partial_files(datablocks)

    def datablock_names(self, folder: str) -> list[str]:
        path = self._path(folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def read_text(self, key: str) -> str:
        return self._path(key).read_text(encoding="utf-8")

    def publish_datablock(
        self, key: str, manifest_key: str, write: Callable[[BinaryIO], T], manifest: Callable[[T], str]
    ) -> None:
        """`write` streams the datablock into `<name>.partial`; fsync, drop its cached pages, write the manifest
        (`.partial`, fsync, no-replace rename), rename the tar without replacing, fsync the folder. The
        temporary files are gone afterwards, whatever happened. Raises AlreadyPublishedError when either name
        is taken before anything is written, FileExistsError when one is taken while it was written."""
        tar_path, manifest_file = self._path(key), self._path(manifest_key)
        folder = tar_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        for path in (tar_path, manifest_file):
            if path.exists():
                raise AlreadyPublishedError(errno.EEXIST, "already published", str(path))
        partial = partial_path(tar_path)
        try:
            with open(partial, "wb") as out:  # truncates a leftover from an earlier crash
                written = write(out)
                out.flush()
                self.ownership.apply(out.fileno(), tar_path)
                os.fsync(out.fileno())
                drop_page_cache(out.fileno())
            # Manifest first: a crash between the two renames leaves a manifest without a tar (a taken name,
            # never reused), never a verified tar with a stale manifest.
            write_json_durably(
                manifest_file,
                manifest(written),
                partial_path(manifest_file),
                rename=rename_no_replace,
                before_sync=lambda fd: self.ownership.apply(fd, manifest_file),
            )
            rename_no_replace(partial, tar_path)
            fsync_dir(folder)
        finally:
            for leftover in (partial, partial_path(manifest_file)):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def wait_until_readable(self, key: str, timeout_s: float) -> None:
        wait_until_readable(self._path(key), timeout_s)

    def open_datablock(self, key: str) -> BinaryIO:
        raw = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
        drop_page_cache(raw.fileno())
        return raw

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ValueError(f"LTS key {key!r} is not a path inside the store")
        return self.root.joinpath(*parts)


def _remove_partial_files(folder: Path) -> list[str]:
    """Delete the half-written files (`*.partial`) in a folder, left by a run killed mid-write. Only for a run
    known to be dead: a live writer's file would be pulled from under it."""
    removed = sorted(folder.glob(f"*{PARTIAL_SUFFIX}")) if folder.exists() else []
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_dir(folder)
    return [path.name for path in removed]
