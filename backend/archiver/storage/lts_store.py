"""The LTS store: what the data path asks of the long-term storage, whatever holds the datablocks.

Keys are `/`-separated names relative to the store; an archive id is one, a dataset's datablocks folder
(`naming.datablocks_key`) another. The store knows no PIDs and no manifest fields: packing names things
(`packing/naming.py`) and parses what it reads. LTS_BACKEND picks the implementation (`open_store`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, TypeVar

from archiver.config.settings import LtsSection
from archiver.storage.lts import FileOwnership
from archiver.storage.posix_store import PosixLtsStore

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
        self, key: str, manifest_key: str, write: Callable[[BinaryIO], T], manifest: Callable[[T], str]
    ) -> None:
        """Atomic and durable, manifest first; never replaces a datablock or manifest that exists (FileExistsError)."""

    def wait_until_readable(self, key: str, timeout_s: float) -> None:
        """Returns once `key` can be read (tape behind the store may recall it first), else LtsWaitTimeout."""

    def open_datablock(self, key: str) -> BinaryIO:
        """The datablock's stored bytes (bypassing caches where it can), unbuffered; the caller closes it."""


def open_store(settings: LtsSection) -> LtsStore:
    """The store LTS_BACKEND names, built from the `[lts]` settings."""
    match settings.backend:
        case "posix":
            ownership = FileOwnership(settings.file_uid, settings.file_gid, settings.file_mode_bits)
            return PosixLtsStore(settings.storage_root, ownership)
