"""The LTS store: what the data path asks of the long-term storage, whatever holds the datablocks.

Keys are `/`-separated names relative to the store; an archive id is one, a dataset's datablocks folder
(`naming.datablocks_key`) another. The store knows no PIDs and no manifest fields: packing names things
(`packing/naming.py`) and parses what it reads. LTS_BACKEND picks the implementation (`open_store`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, TypeVar

from archiver.config.errors import ConfigError
from archiver.config.settings import LtsSection
from archiver.storage.lts import FileOwnership, ReadState, StoredEntry
from archiver.storage.posix_store import PosixLtsStore
from archiver.storage.s3 import S3Credentials, s3_client
from archiver.storage.s3_store import RestorePolicy, S3ColdLtsStore

T = TypeVar("T")


class LtsStore(Protocol):
    @property
    def location(self) -> str:
        """How SciCat's `datasetlifecycle.storageLocation` names this store; the same in every run."""

    def lock_dataset(
        self, folder: str, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[list[str]]:
        """One live holder per folder, freed when its holder dies; yields dead writers' unfinished writes, removed."""

    def datablock_names(self, folder: str) -> list[str]:
        """Every name in `folder`, unfinished writes included, sorted; none when there is no such folder."""

    def read_text(self, key: str) -> str:
        """The whole text under `key` (a manifest); OSError when it is missing or unreadable."""

    def publish_datablock(
        self, key: str, manifest_key: str, write: Callable[[BinaryIO], T], manifest: Callable[[T, str | None], str]
    ) -> None:
        """Atomic and durable, manifest first; never replaces a datablock or manifest that exists (FileExistsError).
        `manifest` gets what `write` returned and the store's own checksum of the bytes it stored (None when the
        store keeps none), for the manifest to record: `verify_datablock` compares it with the stored one."""

    @property
    def space_is_limited(self) -> bool:
        """Whether the store can run out of room: a filesystem can (archival keeps its free space above
        LTS_FREE_SPACE_PERCENTAGE, measured at LTS_STORAGE_ROOT); an S3 bucket has no size to fill."""

    @property
    def verification_reads(self) -> bool:
        """Whether `verify_datablock` reads the datablock back; False: it compares what the store keeps about the
        stored bytes (size, checksum) with the manifest, reading none of them (no restore from a cold tier)."""

    def verify_datablock(
        self,
        key: str,
        size: int,
        stored_checksum: str | None,
        read_back: Callable[[BinaryIO], list[str]],
        timeout_s: float | None = None,
    ) -> list[str]:
        """What is wrong with the datablock as stored, one sentence each; none when it is intact. `size` and
        `stored_checksum` are what the manifest recorded while writing it. A store that reads back gives the
        datablock's bytes from storage to `read_back`, which returns the problems (first waiting up to
        `timeout_s` until readable, when given); an unreadable one is a problem. A store that keeps checksums
        compares them instead, `read_back` unused (it reads back a datablock whose manifest recorded none)."""

    def wait_until_readable(self, key: str, timeout_s: float) -> None:
        """Returns once `key` can be read (tape behind the store may recall it first), else LtsWaitTimeout."""

    def wait_until_all_readable(
        self, keys: list[str], timeout_s: float, on_states: Callable[[dict[str, ReadState]], None] | None = None
    ) -> None:
        """Returns once every one of `keys` can be read: what must be restored or recalled first is asked for
        (once per key, whoever else asks); `on_states` hears every key's state as they change (again and again while
        they wait). LtsWaitTimeout
        at the store's deadline; a cold store's (StillFrozenError) names every key still frozen."""

    def open_datablock(self, key: str, fresh: bool = True) -> BinaryIO:
        """The datablock's bytes, unbuffered and seekable: a seek reads nothing, so a walk over a tar's headers
        reads only them and the members read (partial retrieval). `fresh`: from storage, bypassing caches where
        it can (verification); else cached bytes serve too (retrieval). The caller closes it."""

    def lock(
        self,
        key: str,
        wait_s: float,
        busy: Callable[[str], Exception],
        on_wait: Callable[[], None] | None = None,
        poll_s: float = 1.0,
    ) -> AbstractContextManager[None]:
        """Hold the lock named `key` for the `with` block: one live holder, freed when its holder dies. While
        another holds it, waits up to `wait_s` (trying every `poll_s`, calling `on_wait` once), then raises
        `busy(where)`, `where` naming the lock for an operator."""

    def is_folder(self, key: str) -> bool:
        """Whether `key` is a folder of the store (a dataset's, its datablocks folder, a set-aside folder)."""

    def entries(self, folder: str) -> list[StoredEntry]:
        """What `folder` holds, one entry per name (files, folders, links), sorted by name; none when it is no
        folder. Names gone while they are listed are left out."""

    def size(self, key: str) -> int:
        """Bytes stored under `key`: a datablock's or a manifest's, or all that a folder holds; FileNotFoundError
        when there is nothing."""

    def write_text(self, key: str, text: str) -> None:
        """Store `text` under `key` (an audit record) atomically and durably, replacing what is there; its folder
        must exist."""

    def set_aside(self, keys: list[str], folder: str) -> list[str]:
        """Move each of `keys` that exists into `folder` (created when needed) under its own name, durably; never
        replaces what is there (FileExistsError, the keys not moved yet stay). Returns the new keys."""

    def remove_folder(self, key: str, only_if_empty: bool = False) -> None:
        """Delete the folder `key` and all it holds, links removed, never followed; with `only_if_empty` only an
        empty one (OSError otherwise, nothing removed)."""


def open_store(settings: LtsSection, s3_credentials: S3Credentials | None = None) -> LtsStore:
    """The store LTS_BACKEND names, built from the `[lts]` settings. The "s3" store signs with `s3_credentials`,
    or when None with boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance's or
    container's role)."""
    match settings.backend:
        case "posix":
            ownership = FileOwnership(settings.file_uid, settings.file_gid, settings.file_mode_bits)
            return PosixLtsStore(settings.storage_root, ownership)
        case "s3":
            assert settings.s3_endpoint is not None and settings.s3_bucket is not None  # the section checks them
            return S3ColdLtsStore(
                s3_client(settings.s3_endpoint, settings.s3_region, s3_credentials),
                settings.s3_bucket,
                settings.s3_prefix,
                settings.storage_class,
                RestorePolicy.polling_within(settings.restore_tier, settings.restore_days, settings.restore_timeout_s),
            )


def require_lts(settings: LtsSection) -> None:
    """A POSIX LTS must be mounted here (ConfigError naming LTS_STORAGE_ROOT otherwise); an s3 one is reached
    over the network, its first request says whether it can be."""
    if settings.backend == "posix" and not settings.storage_root.is_dir():
        raise ConfigError(
            f"LTS_STORAGE_ROOT {settings.storage_root} is not a folder here; mount the LTS or set LTS_STORAGE_ROOT"
        )
