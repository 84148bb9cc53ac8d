"""One error tree (archiver/errors.py): every error class of the package is on it, and its verdict decides
retries, the job's final status and how the failure is described."""

import importlib
import inspect
import pkgutil

import pytest

import archiver
from archiver.errors import ArchiverError, Verdict, verdict_of
from archiver.flows.failures import describe_failure
from archiver.flows.jobs import NoDatasetsError, job_verdict
from archiver.flows.lts_tasks import may_retry_storage
from archiver.packing.errors import IntegrityError, InvalidPidError, MissingFilesError
from archiver.packing.retained import RetrievalBudgetError, RetrievalBusyError
from archiver.scicat.models import JobStatus
from archiver.storage.lts import DatasetBusyError, LtsWaitTimeout

FULL_BUCKET = RetrievalBudgetError("20.500.11935/a", needed=2_000, used=900, budget=1_000)


def error_classes_of_the_package() -> list[type[BaseException]]:
    found = []
    for module_info in pkgutil.walk_packages(archiver.__path__, "archiver."):
        module = importlib.import_module(module_info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        ]
    return found


def test_every_error_class_of_the_package_is_on_the_tree():
    classes = error_classes_of_the_package()
    assert len(classes) > 30  # the walk did find them
    assert [c.__qualname__ for c in classes if not issubclass(c, ArchiverError)] == []


@pytest.mark.parametrize(
    "error, verdict",
    [
        (MissingFilesError("20.500.11935/a", ["raw/x.bin"]), Verdict.USER),
        (InvalidPidError("a PID with ../ in it"), Verdict.USER),
        (NoDatasetsError("job-1"), Verdict.USER),
        (FULL_BUCKET, Verdict.TRY_LATER),
        (RetrievalBusyError("another run holds the dataset"), Verdict.TRY_LATER),
        (DatasetBusyError("another run archives the dataset"), Verdict.TRY_LATER),
        (IntegrityError("datablock x", ["checksum differs"]), Verdict.SYSTEM),
        (LtsWaitTimeout("the LTS file stayed offline"), Verdict.SYSTEM),
        (OSError(5, "Input/output error"), Verdict.SYSTEM),
    ],
)
def test_each_error_has_its_verdict(error, verdict):
    assert verdict_of(error) is verdict


@pytest.mark.parametrize(
    "error, retried",
    [
        (FULL_BUCKET, False),  # it stays full for the seconds between tries
        (MissingFilesError("20.500.11935/a", ["raw/x.bin"]), False),
        (IntegrityError("datablock x", ["checksum differs"]), False),
        (OSError(28, "No space left on device"), False),
        (LtsWaitTimeout("the LTS file stayed offline"), True),
        (OSError(5, "Input/output error"), True),
    ],
)
def test_lts_work_retries_only_passing_system_faults(error, retried):
    assert may_retry_storage(error) is retried


def test_a_full_retrieval_bucket_finishes_the_job_with_dataset_errors_described_as_it_is():
    assert job_verdict({"20.500.11935/a": FULL_BUCKET}) is JobStatus.FINISHED_WITH_DATASET_ERRORS
    assert describe_failure(FULL_BUCKET) == f"RetrievalBudgetError: {FULL_BUCKET}"


def test_one_system_fault_among_user_errors_fails_the_job():
    failures = {
        "20.500.11935/a": MissingFilesError("20.500.11935/a", ["raw/x.bin"]),
        "20.500.11935/b": IntegrityError("datablock y", ["size differs"]),
    }
    assert job_verdict(failures) is JobStatus.FINISHED_UNSUCCESSFUL
    assert job_verdict({"20.500.11935/a": failures["20.500.11935/a"]}) is JobStatus.FINISHED_WITH_DATASET_ERRORS
