"""Where a dataset's bytes live: landing-zone keys, LTS folders, archive ids, retrieval keys.

A dataset PID may contain `/` (`20.500.11935/0a1b...`). In the landing zone the
ingestor uses the raw PID in the key (`openem-network/datasets/{pid}/raw_files/`, the
ingestors' layout), so we read it that way. Everywhere we create names (LTS
folders and files, retrieval-bucket keys) the PID is percent-encoded into one
safe segment (`/` -> `%2F`, `%` -> `%25`), which `pid_from_safe_name` reverses.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote, unquote

from archiver.packing.errors import InvalidNameError, InvalidPidError
from archiver.storage.lts import PARTIAL_SUFFIX
from archiver.storage.lts import partial_path as partial_path  # the LTS's temporary names, named here too

DATASETS_PREFIX = "openem-network/datasets"
TAR_SUFFIX = ".tar"
RETRIEVED_FILES_SEGMENT = "files"
MANIFEST_SUFFIX = ".manifest.json"
LANDING_FILES_SEGMENT = "raw_files"


def _problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains NUL or control characters"
    if value.startswith("/") or value.startswith("\\"):
        return "is an absolute path"
    if "\\" in value:
        return "contains a backslash"
    segments = value.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "has an empty, '.' or '..' path segment"
    return None


def check_relative_path(value: str, what: str = "path") -> str:
    """A relative path that stays inside the folder it is joined to; raises InvalidNameError otherwise."""
    problem = _problem(value)
    if problem:
        raise InvalidNameError(f"{what} {value!r} {problem}; it could escape its folder, so it is refused")
    return value


def check_pid(pid: str) -> str:
    """A PID usable in every name we derive from it; raises InvalidPidError (a user error) otherwise.

    A PID may not have a `raw_files` segment: `{pid}/raw_files/...` would put one dataset's
    landing prefix inside another's, whose listing and clean-up would then take its files."""
    try:
        check_relative_path(pid, "dataset PID")
    except InvalidNameError as e:
        raise InvalidPidError(str(e)) from None
    if LANDING_FILES_SEGMENT in pid.split("/"):
        raise InvalidPidError(
            f"dataset PID {pid!r} has a path segment {LANDING_FILES_SEGMENT!r}: its landing-zone prefix would lie "
            f"inside another dataset's ({DATASETS_PREFIX}/<pid>/{LANDING_FILES_SEGMENT}/), so it is refused; "
            "register the dataset under a PID without that segment"
        )
    return pid


def safe_name(pid: str) -> str:
    """One path segment for a PID, reversible with `pid_from_safe_name`."""
    return quote(check_pid(pid), safe="")


def pid_from_safe_name(name: str) -> str:
    return check_pid(unquote(name))


def landing_prefix(pid: str) -> str:
    """Key prefix of the dataset's files in the landing-zone bucket (raw PID, as the ingestor writes it)."""
    return f"{DATASETS_PREFIX}/{check_pid(pid)}/{LANDING_FILES_SEGMENT}/"


def dataset_key(pid: str) -> str:
    """The dataset's folder in the LTS store: `openem-network/datasets/{safe}` (holds `datablocks/` and any
    `discarded/`)."""
    return f"{DATASETS_PREFIX}/{safe_name(pid)}"


def datablocks_key(pid: str) -> str:
    """The dataset's datablocks folder relative to the LTS root, as the LTS store names it."""
    return f"{dataset_key(pid)}/datablocks"


def datablock_name(pid: str, index: int) -> str:
    return f"{safe_name(pid)}_{index:05d}{TAR_SUFFIX}"


def datablock_index(pid: str, file_name: str) -> int | None:
    """The index of a datablock file of the dataset (tar, manifest or their temporary names), else None."""
    rest = file_name.removeprefix(f"{safe_name(pid)}_")
    digits = rest.split(".", 1)[0]
    if (
        rest == file_name
        or not digits.isdigit()
        or rest[len(digits) :]
        not in (
            TAR_SUFFIX,
            MANIFEST_SUFFIX,
            TAR_SUFFIX + PARTIAL_SUFFIX,
            MANIFEST_SUFFIX + PARTIAL_SUFFIX,
        )
    ):
        return None
    return int(digits)


def archive_id(pid: str, index: int) -> str:
    """The datablock's id in SciCat: its path relative to the LTS root."""
    return f"{datablocks_key(pid)}/{datablock_name(pid, index)}"


def check_archive_id(archive_id_: str) -> str:
    """An archive id naming a tar file in a dataset's datablocks folder; raises InvalidNameError otherwise (ids
    that leave the datasets folder or are not tar files)."""
    check_relative_path(archive_id_, "archiveId")
    parts = PurePosixPath(archive_id_).parts
    if (
        len(parts) != 5
        or "/".join(parts[:2]) != DATASETS_PREFIX
        or parts[3] != "datablocks"
        or not parts[4].endswith(TAR_SUFFIX)
    ):
        raise InvalidNameError(
            f"archiveId {archive_id_!r} is not of the form {DATASETS_PREFIX}/<dataset>/datablocks/<name>{TAR_SUFFIX}"
        )
    return archive_id_


def archive_id_of_dataset(pid: str, archive_id_: str) -> bool:
    """Whether an archive id names a datablock in the dataset's own LTS folder."""
    try:
        check_archive_id(archive_id_)
    except InvalidNameError:
        return False
    return PurePosixPath(archive_id_).parts[2] == safe_name(pid)


def dataset_key_of(archive_id_: str) -> str:
    """The folder in the LTS store of the dataset an archive id names a datablock of (`dataset_key`)."""
    return str(PurePosixPath(check_archive_id(archive_id_)).parents[1])


def manifest_id(archive_id_: str) -> str:
    """The manifest beside a datablock (an archive id, or a tar's name: the same of the manifest)."""
    return archive_id_.removesuffix(TAR_SUFFIX) + MANIFEST_SUFFIX


def retrieval_prefix(pid: str) -> str:
    """Everything of a dataset in the retrieval bucket: its datablocks and its single retrieved files."""
    return f"{DATASETS_PREFIX}/{safe_name(pid)}/"


def retrieved_file_key(pid: str, path: str) -> str:
    """Key of one file of a partial retrieval: `{retrieval_prefix}files/{path}`."""
    return f"{retrieval_prefix(pid)}{RETRIEVED_FILES_SEGMENT}/{check_relative_path(path, 'file path')}"


def retrieval_key(archive_id_: str) -> str:
    """Key of a retrieved datablock in the retrieval bucket (mirrors its place on the LTS)."""
    return check_archive_id(archive_id_)
