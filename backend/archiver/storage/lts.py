"""The LTS filesystem: durable writes, free-space and readability waits; the errors of the LTS store and the
entries it lists."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from archiver.errors import ArchiverError, TryLaterError

if TYPE_CHECKING:
    from archiver.storage.lts_store import LtsStore

PARTIAL_SUFFIX = ".partial"


class LtsWaitTimeout(ArchiverError):
    """The LTS did not reach the needed state in time; the message says which and what to do."""

    transient = True  # an HSM recall or a slow mount may be done by the next try


class StillFrozenError(LtsWaitTimeout):
    """Restores of archived datablocks did not finish by LTS_RESTORE_TIMEOUT_HOURS. Not tried again within the
    run: a try waits as long again. `frozen` holds the keys still frozen."""

    transient = False

    def __init__(self, frozen: list[str], message: str):
        super().__init__(message)
        self.frozen = frozen


class ReadState(StrEnum):
    """How far a datablock is from being readable (`LtsStore.wait_until_all_readable`)."""

    WAITING = "waiting"  # not known readable yet
    RESTORE_REQUESTED = "restore requested"  # a restore (or recall) is under way, by us or another reader
    READY = "ready"


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full(error: BaseException) -> bool:
    """Whether an error says the LTS (or the account's quota on it) has no room left: trying again will not help."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


class LtsOwnershipError(ArchiverError):
    """LTS_FILE_UID / LTS_FILE_GID could not be given to a file written to the LTS."""


class DatasetBusyError(TryLaterError):
    """Another live process is writing this dataset's datablocks."""


def dataset_busy(lock: str, wait_s: float) -> DatasetBusyError:
    """The error of a dataset write lock (`lock` names it) that another holder kept for `wait_s`."""
    return DatasetBusyError(
        f"another process is writing the dataset's datablocks (it holds {lock}"
        + (f" and kept it for {wait_s:.0f} s" if wait_s else "")
        + "); wait for that run to end before archiving the dataset again"
    )


class AlreadyPublishedError(ArchiverError, FileExistsError):
    """A datablock or its manifest is already published under the name asked for; nothing was written."""


@dataclass(frozen=True)
class StoredEntry:
    """One name in a folder of the LTS store (`LtsStore.entries`)."""

    name: str
    is_folder: bool  # a folder, or a symbolic link to one
    is_link: bool  # a symbolic link (a POSIX store's); pruning never follows one
    size: int  # bytes of a file (of the file a link points to); 0 for anything else
    modified: datetime  # UTC; of the entry itself, not of what a link points to


def problems_read_back(
    store: LtsStore, key: str, check: Callable[[BinaryIO], list[str]], timeout_s: float | None = None
) -> list[str]:
    """The problems `check` finds in the datablock's bytes as stored, or that it cannot be opened; first waiting
    up to `timeout_s` until it is readable (a restore, a recall), when given."""
    if timeout_s is not None:
        store.wait_until_readable(key, timeout_s)
    try:
        raw = store.open_datablock(key)
    except OSError as e:
        return [f"tar file unreadable: {e}"]
    with raw:
        return check(raw)


@dataclass(frozen=True)
class FileOwnership:
    """Owner and mode given to a file written to the LTS before it is published (LTS_FILE_UID, LTS_FILE_GID,
    LTS_FILE_MODE); None leaves that part as the file was created."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None

    def apply(self, fd: int, path: Path) -> None:
        if self.uid is not None or self.gid is not None:
            try:
                os.fchown(fd, -1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)
            except PermissionError as e:
                raise LtsOwnershipError(
                    f"{path} cannot be given owner {self.uid if self.uid is not None else '-'}:"
                    f"{self.gid if self.gid is not None else '-'} (LTS_FILE_UID:LTS_FILE_GID): the flow run's user "
                    f"(uid {os.getuid()}) may not change owners; run the flow-run containers as root (or with "
                    "CAP_CHOWN), or unset LTS_FILE_UID and LTS_FILE_GID"
                ) from e
        if self.mode is not None:
            os.fchmod(fd, self.mode)


@contextlib.contextmanager
def exclusive_flock(
    lock_path: Path,
    wait_s: float,
    busy: Callable[[], Exception],
    on_wait: Callable[[], None] | None = None,
    poll_s: float = 1.0,
) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created if missing) for the `with` block; the kernel drops it
    when its holder dies. While another process holds it, waits up to `wait_s`, trying every `poll_s` and
    calling `on_wait` once; then raises `busy()`."""
    deadline = time.monotonic() + wait_s
    with open(lock_path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy() from None
                if on_wait:
                    on_wait()
                    on_wait = None
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_path(final_path: Path) -> Path:
    """Temporary name while a file is written; never taken for a finished file."""
    return final_path.with_name(final_path.name + PARTIAL_SUFFIX)


def write_json_durably(
    path: Path,
    text: str,
    temp_path: Path,
    rename: Callable[[Path, Path], None] = os.replace,
    before_sync: Callable[[int], None] | None = None,
) -> None:
    """Write to `temp_path`, call `before_sync` with its descriptor, fsync, `rename` to `path` (the caller
    fsyncs the folder)."""
    with open(temp_path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if before_sync is not None:
            before_sync(f.fileno())
        os.fsync(f.fileno())
    rename(temp_path, path)


def rename_no_replace(source: Path, target: Path) -> None:
    """Give `source` the name `target` unless a file has that name: raises FileExistsError then.

    A hard link is created atomically or not at all, so two writers cannot both win; where the
    filesystem has no hard links the name is checked first (callers hold the dataset's lock)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
        os.rename(source, target)
        return
    os.unlink(source)


def drop_page_cache(fd: int) -> None:
    """Ask the OS to forget the file's cached pages so the next read comes from storage (best effort)."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def free_percentage(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return 100.0 * usage.free / usage.total if usage.total else 0.0


def has_free_space(path: Path, min_free_percentage: float, free: Callable[[Path], float] = free_percentage) -> bool:
    """The one test of enough room, for the wait below and for skipping it (archival)."""
    return free(path) > min_free_percentage


def _wait(
    ready: Callable[[], bool],
    timeout_s: float,
    describe_timeout: Callable[[], str],
    first_interval_s: float,
    max_interval_s: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    deadline = clock() + timeout_s
    interval = first_interval_s
    while not ready():
        remaining = deadline - clock()
        if remaining <= 0:
            raise LtsWaitTimeout(describe_timeout())
        sleep(min(interval, remaining))
        interval = min(interval * 2, max_interval_s)


def wait_for_free_space(
    path: Path,
    min_free_percentage: float,
    timeout_s: float,
    *,
    first_interval_s: float = 1.0,
    max_interval_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    free: Callable[[Path], float] = free_percentage,
) -> float:
    """Block until more than `min_free_percentage` % of the filesystem of `path` is free; returns the free %."""
    _wait(
        lambda: has_free_space(path, min_free_percentage, free),
        timeout_s,
        lambda: (
            f"LTS at {path} has {free(path):.1f}% free space, "
            f"below LTS_FREE_SPACE_PERCENTAGE={min_free_percentage:g}%, "
            f"and did not free up within {timeout_s:g}s (LTS_FREE_SPACE_TIMEOUT_S); free space on the LTS "
            "or lower the threshold, then restart the job"
        ),
        first_interval_s,
        max_interval_s,
        sleep,
        clock,
    )
    return free(path)


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False


def wait_until_readable(
    path: Path,
    timeout_s: float,
    *,
    first_interval_s: float = 1.0,
    max_interval_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Block until `path` can be opened and read (tape-backed storage may first recall it)."""
    _wait(
        lambda: _readable(path),
        timeout_s,
        lambda: (
            f"LTS file {path} is not readable ({_why_unreadable(path)}) after {timeout_s:g}s "
            "(LTS_FILE_TIMEOUT_S); check that the LTS is mounted and the file exists"
        ),
        first_interval_s,
        max_interval_s,
        sleep,
        clock,
    )


def _why_unreadable(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return e.strerror or type(e).__name__
    return "readable now"
