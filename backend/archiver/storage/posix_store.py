"""The LTS as a POSIX filesystem (a mount, tape possibly behind it): the LtsStore of LTS_BACKEND "posix".

A key is a path relative to the root. A datablock is written under a temporary name (`.partial`), fsynced and
renamed, its manifest first, so a file under a final name is always complete; a final name is never replaced.
A dataset's writers exclude each other with an `flock` on `.archiving.lock` beside its datablocks folder; other
locks (`lock`) are `flock`s on the file their key names. Set-aside datablocks are renamed, never copied.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

from archiver.storage.lts import (
    PARTIAL_SUFFIX,
    AlreadyPublishedError,
    FileOwnership,
    ReadState,
    StoredEntry,
    dataset_busy,
    drop_page_cache,
    exclusive_flock,
    fsync_dir,
    partial_path,
    problems_read_back,
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

        with exclusive_flock(
            lock_path,
            wait_s,
            lambda: dataset_busy(str(lock_path), wait_s),
            (lambda: on_wait(str(lock_path))) if on_wait else None,
        ):
            yield _remove_partial_files(datablocks)

    def datablock_names(self, folder: str) -> list[str]:
        path = self._path(folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def read_text(self, key: str) -> str:
        return self._path(key).read_text(encoding="utf-8")

    def publish_datablock(
        self, key: str, manifest_key: str, write: Callable[[BinaryIO], T], manifest: Callable[[T, str | None], str]
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
                manifest(written, None),
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

    def wait_until_all_readable(
        self, keys: list[str], timeout_s: float, on_states: Callable[[dict[str, ReadState]], None] | None = None
    ) -> None:
        """One file after the other, each within `timeout_s` (an HSM recalls a file when it is opened)."""
        states = dict.fromkeys(keys, ReadState.WAITING)
        for key in states:
            self.wait_until_readable(key, timeout_s)
            states[key] = ReadState.READY
            if on_states is not None:
                on_states(dict(states))

    space_is_limited = True
    verification_reads = True  # a filesystem keeps no checksum of a file

    def verify_datablock(
        self,
        key: str,
        size: int,
        stored_checksum: str | None,
        read_back: Callable[[BinaryIO], list[str]],
        timeout_s: float | None = None,
    ) -> list[str]:
        """Reads it back, from storage rather than the page cache (`open_datablock`); `size` is checked by
        `read_back` against what it reads."""
        return problems_read_back(self, key, read_back, timeout_s)

    def open_datablock(self, key: str, fresh: bool = True) -> BinaryIO:
        raw = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
        if fresh:
            drop_page_cache(raw.fileno())
        return raw

    @contextlib.contextmanager
    def lock(
        self,
        key: str,
        wait_s: float,
        busy: Callable[[str], Exception],
        on_wait: Callable[[], None] | None = None,
        poll_s: float = 1.0,
    ) -> Iterator[None]:
        """An exclusive `flock` on the file `key` names (created, with its folder, if missing): the kernel drops
        it the moment its holder dies, so a killed run never blocks anyone."""
        lock_path = self._path(key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_flock(lock_path, wait_s, lambda: busy(str(lock_path)), on_wait, poll_s):
            yield

    def is_folder(self, key: str) -> bool:
        return self._path(key).is_dir()

    def entries(self, folder: str) -> list[StoredEntry]:
        path = self._path(folder)
        if not path.is_dir():
            return []
        with os.scandir(path) as listing:
            found = [_entry(item) for item in sorted(listing, key=lambda item: item.name)]
        return [entry for entry in found if entry is not None]

    def size(self, key: str) -> int:
        """A file's size follows a symbolic link; a folder's is the sum of the sizes of the files and links in
        it, at any depth, no link followed."""
        path = self._path(key)
        if path.is_dir() and not path.is_symlink():
            return _tree_size(path)
        return path.stat().st_size

    def write_text(self, key: str, text: str) -> None:
        """Written to `<name>.partial`, fsynced, renamed over `key`; the folder fsynced."""
        path = self._path(key)
        write_json_durably(path, text, partial_path(path))
        fsync_dir(path.parent)

    def set_aside(self, keys: list[str], folder: str) -> list[str]:
        """Renamed (no-replace) into `folder`, then the folders on both sides fsynced."""
        target = self._path(folder)
        moved: list[str] = []
        touched: set[Path] = set()
        for key in keys:
            path = self._path(key)
            if not path.exists():
                continue
            target.mkdir(parents=True, exist_ok=True)
            rename_no_replace(path, target / path.name)
            moved.append(f"{folder}/{path.name}")
            touched.update((target, path.parent))
        for changed in touched:
            fsync_dir(changed)
        return moved

    def remove_folder(self, key: str, only_if_empty: bool = False) -> None:
        path = self._path(key)
        if only_if_empty:
            path.rmdir()
        else:
            shutil.rmtree(path)

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ValueError(f"LTS key {key!r} is not a path inside the store")
        return self.root.joinpath(*parts)


def _entry(item: os.DirEntry) -> StoredEntry | None:
    """What the listing says of one name; None when it is gone since (a set-aside or a prune meanwhile)."""
    try:
        own = item.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    is_link = item.is_symlink()
    is_file = item.is_file()  # follows a link
    try:
        size = (item.stat().st_size if is_link else own.st_size) if is_file else 0
    except OSError:
        size = 0
    return StoredEntry(item.name, item.is_dir(), is_link, size, datetime.fromtimestamp(own.st_mtime, UTC))


def _tree_size(folder: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            total += (Path(parent) / name).lstat().st_size
    return total


def _remove_partial_files(folder: Path) -> list[str]:
    """Delete the half-written files (`*.partial`) in a folder, left by a run killed mid-write. Only for a run
    known to be dead: a live writer's file would be pulled from under it."""
    removed = sorted(folder.glob(f"*{PARTIAL_SUFFIX}")) if folder.exists() else []
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_dir(folder)
    return [path.name for path in removed]
