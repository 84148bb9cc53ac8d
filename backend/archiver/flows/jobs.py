"""The job level shared by archival and retrieval: status in SciCat, datasets in parallel, the verdict."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from prefect.logging import get_run_logger
from prefect.logging.loggers import flow_run_logger

from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.flows.common import Connections, connect, run_bounded, scicat_call
from archiver.packing.errors import DatasetUserError
from archiver.scicat.models import DatasetLifecycle, Job, JobResultEntry, JobResultObject, JobStatus


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


CleanUp = Callable[[str, RunConfiguration, Connections, BaseException, logging.LoggerAdapter], None]


@dataclass(frozen=True)
class JobKind:
    """What finishing an interrupted job of one kind needs: when a dataset is done, and how to clean one up."""

    name: str  # "archival" / "retrieval"
    is_done: Callable[[DatasetLifecycle | None], bool]
    clean_up: CleanUp


def job_is_finished(job: Job) -> bool:
    """SciCat already holds a final status for the job (v3 or v4 status field)."""
    return (job.job_status_message or job.status_code or "").startswith("finished")


def finish_interrupted_job(
    kind: JobKind, job_id: str, dataset_ids: list[str] | None, reason: str,
    config: RunConfiguration, connections: Connections, log,
) -> bool:
    """Clean up every dataset of an interrupted job not yet done, report each failed, then the job
    finishedUnsuccessful with `reason`. Does nothing when SciCat already shows the job finished
    (another path got there first). Returns whether it reported the job."""
    scicat = connections.scicat
    if job_is_finished(scicat.get_job(job_id)):
        log.info("job %s: already finished in SciCat; nothing to do", job_id)
        return False
    for pid in dataset_ids or scicat.get_job_dataset_pids(job_id):
        if not kind.is_done(scicat.get_dataset(pid).datasetlifecycle):
            kind.clean_up(pid, config, connections, RuntimeError(reason), log)
    scicat.update_job_status(job_id, JobStatus.FINISHED_UNSUCCESSFUL, reason[:2000])
    log.warning("job %s: %s; datasets not finished were cleaned up and reported failed", job_id, reason)
    return True


def on_job_cancelled(kind: JobKind):
    """A cancellation hook for a job run (the runner or the engine runs it outside the cancelled code).
    A crashed run's hooks die with its container; the recover_job flow handles crashes."""

    def hook(flow, flow_run, state) -> None:
        log = flow_run_logger(flow_run, flow)
        config = load_run_configuration()
        with connect(config) as connections:
            finish_interrupted_job(
                kind, flow_run.parameters["job_id"], flow_run.parameters.get("dataset_ids"),
                f"{kind.name} run {flow_run.name} {state.name.lower()}", config, connections, log,
            )

    return hook
