"""The root of the archiver's errors and the verdict each carries: who must act, and whether trying again helps.

Every error class of the package derives from `ArchiverError` (backend/tests/unit/test_error_tree.py) and
takes its verdict from the branch it is on:

- `UserError`: what the user sent is at fault (a dataset as uploaded, a PID, a job without datasets). The
  user must fix it; trying again cannot help. The job finishes `finishedWithDatasetErrors`, an archival's
  dataset `missingFilesError`.
- `TryLaterError`: a predictable condition that passes (the retrieval bucket's budget used up, another run
  holding the dataset). Nothing is broken and nothing sent is wrong, but a retry within the run cannot
  help; the message says what to wait for. The job finishes `finishedWithDatasetErrors`.
- anything else is a system fault: the archiver or a service it uses failed and an operator looks. The
  job finishes `finishedUnsuccessful`. Errors not of our own (S3, OS, network) are taken as passing and
  retried where a step allows; our own are findings (a checksum that differs, a name refused) and are
  not, unless marked `transient`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Verdict(StrEnum):
    USER = "user"
    TRY_LATER = "try later"
    SYSTEM = "system"


class ArchiverError(Exception):
    """Base of the archiver's errors; on its own, a system fault."""

    verdict: ClassVar[Verdict] = Verdict.SYSTEM
    transient: ClassVar[bool] = False  # a system fault that trying the step again may clear


class UserError(ArchiverError):
    """What the user sent is at fault; the user must fix it."""

    verdict = Verdict.USER


class TryLaterError(ArchiverError):
    """A predictable condition that passes; the same request succeeds later."""

    verdict = Verdict.TRY_LATER


def verdict_of(error: BaseException | None) -> Verdict:
    """The error's verdict; a failure without a known error is the system's."""
    return error.verdict if isinstance(error, ArchiverError) else Verdict.SYSTEM


def is_system_fault(error: BaseException | None) -> bool:
    return verdict_of(error) is Verdict.SYSTEM


def retry_may_help(error: BaseException) -> bool:
    """Whether trying a step again at once may succeed: a passing system fault."""
    if isinstance(error, ArchiverError):
        return error.transient
    return isinstance(error, Exception)
