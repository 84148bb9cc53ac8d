"""The job level shared by archival and retrieval: status in SciCat, datasets in parallel, the verdict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.logging import get_run_logger

from archiver.config.runtime import RunConfiguration
from archiver.flows.common import Connections, run_bounded, scicat_call
from archiver.packing.errors import DatasetUserError
from archiver.scicat.models import JobResultEntry, JobResultObject, JobStatus


class JobFailed(Exception):
    """Raised after the job's final status is in SciCat, so the Prefect run shows as failed too."""


def job_verdict(failures: dict[str, BaseException]) -> JobStatus:
    """finishedWithDatasetErrors when only users' mistakes failed datasets; finishedUnsuccessful on any system error."""
    if not failures:
        return JobStatus.FINISHED_SUCCESSFUL
    if all(isinstance(e, DatasetUserError) for e in failures.values()):
        return JobStatus.FINISHED_WITH_DATASET_ERRORS
    return JobStatus.FINISHED_UNSUCCESSFUL


def run_job(
    job_id: str,
    dataset_ids: list[str] | None,
    config: RunConfiguration,
    connections: Connections,
    process_dataset: Callable[[str], list[JobResultEntry] | None],
) -> list[JobResultEntry]:
    """Mark the job in progress, process each dataset (bounded in parallel), report the outcome.

    `process_dataset` raises for a failed dataset (after cleaning up after it) and
    may return result entries (retrieval URLs) to put into the job result."""
    log = get_run_logger()
    scicat = connections.scicat
    scicat_call("job inProgress", scicat.update_job_status, job_id, JobStatus.IN_PROGRESS)
    if not dataset_ids:
        dataset_ids = scicat_call("datasets of the job", scicat.get_job_dataset_pids, job_id)
    dataset_ids = list(dict.fromkeys(dataset_ids))  # a dataset named twice is processed once
    log.info("job %s: %d dataset(s): %s", job_id, len(dataset_ids), ", ".join(dataset_ids))

    outcomes = run_bounded(process_dataset, dataset_ids, config.settings.archiver.dataset_concurrency)
    failures = {pid: o for pid, o in zip(dataset_ids, outcomes, strict=True) if isinstance(o, BaseException)}
    results = [entry for o in outcomes if isinstance(o, list) for entry in o]

    verdict = job_verdict(failures)
    message = _summary(len(dataset_ids), failures)
    result_object = JobResultObject(result=results) if results else None
    scicat_call(f"job {verdict.value}", scicat.update_job_status, job_id, verdict, message, result_object)
    if failures:
        raise JobFailed(f"job {job_id}: {message}")
    log.info("job %s: %s", job_id, message)
    return results


def _summary(total: int, failures: dict[str, BaseException]) -> str:
    if not failures:
        return f"all {total} dataset(s) done"
    details = "; ".join(f"{pid}: {type(e).__name__}: {e}" for pid, e in failures.items())
    return f"{len(failures)} of {total} dataset(s) failed: {details}"[:2000]


def parameters_of(flow_run: Any) -> tuple[str, list[str] | None]:
    """job_id and dataset_ids of a job-level flow run (for state hooks)."""
    return flow_run.parameters["job_id"], flow_run.parameters.get("dataset_ids")
