"""Errors of the data path; their verdicts (user, try later, system) are those of `archiver.errors`.

- `DatasetUserError`: the dataset as uploaded is at fault (files listed but
  missing or unreadable in the landing zone, an empty dataset). The flow
  reports SciCat's `missingFilesError`; the user has to fix the upload.
- The others (`IntegrityError`, a refused name) are system faults found on the data path:
  `scheduleArchiveJobFailed` / `datasetRetrievalFailed`, and never retried.
"""

from __future__ import annotations

from archiver.errors import ArchiverError, UserError


class InvalidNameError(ArchiverError, ValueError):
    """A dataset PID, file path or archive id that could escape its folder or is not representable."""


class DatasetUserError(UserError):
    """The dataset's landing-zone content is at fault; the user must fix the upload."""


class InvalidPidError(DatasetUserError, InvalidNameError):
    """A dataset PID the archiver cannot use as a name (SciCat URL, landing-zone prefix, LTS folder)."""


class RegistrationConflictError(ArchiverError):
    """SciCat's datablocks of a dataset do not match the LTS; nothing is changed until someone looks."""

    def __init__(self, pid: str, problems: list[str]):
        self.pid = pid
        self.problems = list(problems)
        super().__init__(
            f"dataset {pid}: its datablocks registered in SciCat do not match the LTS: {_listing(self.problems, 5)}; "
            "nothing was changed: check the LTS and the registrations before archiving or retrieving it again"
        )


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class MissingFilesError(DatasetUserError):
    """Files the dataset should contain are missing, differ in size, or cannot be read in the landing zone."""

    def __init__(self, pid: str, files: list[str], detail: str = "missing in the landing zone"):
        self.pid = pid
        self.files = list(files)
        super().__init__(
            f"dataset {pid}: {len(self.files)} file(s) {detail}: {_listing(self.files)}; "
            "upload them again below the dataset's landing-zone prefix, then restart the job"
        )


class UnsafeFileNamesError(DatasetUserError):
    """Landing-zone keys whose relative path could escape the dataset folder when unpacked."""

    def __init__(self, pid: str, files: list[str]):
        self.pid = pid
        self.files = list(files)
        super().__init__(
            f"dataset {pid}: {len(self.files)} file name(s) with '..', empty or '.' segments or control characters: "
            f"{_listing([repr(f) for f in self.files])}; rename them in the landing zone"
        )


class FilesNotInDatasetError(DatasetUserError):
    """A retrieve job names files the dataset does not hold."""

    def __init__(self, pid: str, files: list[str]):
        self.pid = pid
        self.files = list(files)
        super().__init__(
            f"dataset {pid} has no file(s) {_listing([repr(f) for f in self.files])}; nothing was retrieved: "
            "list paths exactly as the dataset's file list shows them (relative to the dataset), or none for the "
            "whole dataset"
        )


class EmptyDatasetError(DatasetUserError):
    def __init__(self, pid: str, prefix: str, bucket: str):
        self.pid = pid
        super().__init__(
            f"dataset {pid}: no files below s3://{bucket}/{prefix}; upload the dataset there before archiving it"
        )


class IntegrityError(ArchiverError):
    """A datablock does not match what was recorded; `problems` lists every one found."""

    def __init__(self, what: str, problems: list[str]):
        self.what = what
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{what}: {len(self.problems)} problem(s):\n{lines}")


class ConflictingListingError(DatasetUserError):
    """SciCat's origdatablocks list one path twice, with different sizes or checksums."""

    def __init__(self, pid: str, files: list[str]):
        self.pid = pid
        self.files = list(files)
        super().__init__(
            f"dataset {pid}: {len(self.files)} file(s) listed twice in its origdatablocks with different content: "
            f"{_listing(self.files)}; correct the origdatablocks so each file is listed once, then restart the job"
        )


class ChecksumMismatchError(DatasetUserError):
    """Landing-zone files whose bytes do not have the checksum SciCat's origdatablocks list for them."""

    def __init__(self, pid: str, files: list[str]):
        self.pid = pid
        self.files = list(files)
        super().__init__(
            f"dataset {pid}: {len(self.files)} file(s) in the landing zone differ from the checksum SciCat lists: "
            f"{_listing(self.files)}; nothing was registered: upload the right files again (or correct the "
            "origdatablocks), then restart the job"
        )


class ArchivedDatasetChangedError(DatasetUserError):
    """An archive job for a dataset already archived, whose files are no longer what its datablocks hold."""

    def __init__(self, pid: str, differences: list[str]):
        self.pid = pid
        self.differences = list(differences)
        super().__init__(
            f"dataset {pid} is archived and its files differ from what its registered datablocks hold: "
            f"{_listing(self.differences)}; nothing was changed on the LTS or in SciCat: a changed dataset is a new "
            "dataset in SciCat (register it under a new PID and archive that)"
        )


class DatablockExistsError(ArchiverError):
    """A datablock was about to be published under a name the LTS already holds (never overwritten)."""
