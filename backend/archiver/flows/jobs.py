"""The job level shared by archival and retrieval: status in SciCat, datasets in parallel, the verdict."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.logging.loggers import flow_run_logger
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from archiver.clients.connections import Connections, connect
from archiver.config.deployments import DATASET_IDS, JOB_ID, JobKind
from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.errors import ArchiverError, UserError, is_system_fault
from archiver.flows.artifact_keys import artifact_key
from archiver.flows.cancellation import RunCancelled, RunNotOwned, raise_if_cancelled
from archiver.flows.failures import describe_failure
from archiver.flows.figures import wait_for_figures
from archiver.flows.parallel import run_bounded
from archiver.flows.scicat_tasks import scicat_call
from archiver.packing.download_script import job_download_script
from archiver.packing.errors import InvalidPidError
from archiver.packing.naming import check_pid
from archiver.scicat.models import JobResultEntry, JobResultObject, JobStatus
from archiver.storage.s3 import presigned_url_expiry


class JobFailed(ArchiverError):
    """Raised after the job's final status is in SciCat, so the Prefect run shows as failed too."""


def job_verdict(failures: dict[str, BaseException]) -> JobStatus:
    """finishedWithDatasetErrors when no dataset failed by a system fault (archiver.errors); finishedUnsuccessful
    on any."""
    if not failures:
        return JobStatus.FINISHED_SUCCESSFUL
    if not any(is_system_fault(e) for e in failures.values()):
        return JobStatus.FINISHED_WITH_DATASET_ERRORS
    return JobStatus.FINISHED_UNSUCCESSFUL


@dataclass
class DatasetDone:
    """What a dataset's processing hands back to the job: result entries (download links), a note, and
    the datablocks and bytes it moved (for the job's summary)."""

    entries: list[JobResultEntry] = field(default_factory=list)
    note: str | None = None
    datablocks: int = 0
    bytes: int = 0


class NoDatasetsError(UserError):
    def __init__(self, job_id: str):
        super().__init__(
            f"job {job_id} names no datasets (neither datasetList nor jobParams.datasetList has a pid); "
            "nothing was done: create the job again with the datasets it is for"
        )


def checked_pids(dataset_ids: list[str]) -> tuple[list[str], dict[str, BaseException]]:
    """The usable PIDs, and the refused ones with why; a refused PID is never put into a SciCat URL."""
    usable: list[str] = []
    refused: dict[str, BaseException] = {}
    for pid in dataset_ids:
        try:
            usable.append(check_pid(pid))
        except InvalidPidError as e:
            refused[pid] = e
    return usable, refused


def run_job(
    job_id: str,
    dataset_ids: list[str] | None,
    config: RunConfiguration,
    connections: Connections,
    process_dataset: Callable[[str, list[str]], DatasetDone],
    dataset_files: dict[str, list[str]] | None = None,
) -> list[JobResultEntry]:
    """Mark the job in progress, process each dataset (bounded in parallel), report the outcome.

    `process_dataset(pid, files)` gets the files the job names for the dataset (`dataset_files`, or
    the job's dataset list when SciCat is asked for it; [] for all). It raises for a failed dataset
    (after cleaning up after it) and returns what goes into the job result (retrieval URLs) and message."""
    log = get_run_logger()
    scicat = connections.scicat
    scicat_call("job inProgress", scicat.update_job_status, job_id, JobStatus.IN_PROGRESS)
    if not dataset_ids:
        job = scicat_call("datasets of the job", scicat.get_job, job_id)
        dataset_ids, dataset_files = job.dataset_pids, job.dataset_files
    dataset_files = dataset_files or {}
    if not dataset_ids:
        error = NoDatasetsError(job_id)
        scicat_call(
            "job finishedUnsuccessful", scicat.update_job_status, job_id, JobStatus.FINISHED_UNSUCCESSFUL, str(error)
        )
        raise JobFailed(str(error))
    requested = list(dict.fromkeys(dataset_ids))  # a dataset named twice is processed once
    dataset_ids, failures = checked_pids(requested)
    log.info("job %s: %d dataset(s): %s", job_id, len(dataset_ids), ", ".join(dataset_ids))

    seconds: dict[str, float] = {}

    def timed(pid: str) -> DatasetDone:
        start = time.monotonic()
        try:
            # A dataset's subflow run sends no heartbeat: the zombie automation watches job runs only
            # (config.automations), and the end of a flow run waits out its heartbeat thread's current
            # sleep (docs/datapath.md, "Heartbeats of dataset subflows").
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                return process_dataset(pid, dataset_files.get(pid, []))
        finally:
            seconds[pid] = time.monotonic() - start

    outcomes = run_bounded(timed, dataset_ids, config.settings.archiver.dataset_concurrency)
    failures.update((pid, o) for pid, o in zip(dataset_ids, outcomes, strict=True) if isinstance(o, BaseException))
    done = [o for o in outcomes if isinstance(o, DatasetDone)]
    results = [entry for o in done for entry in o.entries]

    _raise_if_not_owned(failures)
    verdict = job_verdict(failures)
    message = _summary(len(requested), failures, [o.note for o in done if o.note])
    script = job_download_script(job_id, results)
    result_object = JobResultObject(result=results, download_script=script) if results else None
    scicat_call(f"job {verdict.value}", scicat.update_job_status, job_id, verdict, message, result_object)
    wait_for_figures()
    reported: dict[str, DatasetDone | BaseException] = dict(zip(dataset_ids, outcomes, strict=True))
    reported.update(failures)
    _report_job(job_id, verdict, reported, seconds, results)
    if failures:
        raise JobFailed(f"job {job_id}: {message}")
    log.info("job %s: %s", job_id, message)
    return results


def _raise_if_not_owned(failures: dict[str, BaseException]) -> None:
    """A run no longer running in Prefect (taken for crashed while it was frozen) reports nothing: its job is
    another run's. A cancelled one still reports (its cancellation hook would otherwise)."""
    for error in failures.values():
        if isinstance(error, RunNotOwned):
            raise error
    try:
        raise_if_cancelled()
    except RunCancelled:
        pass


def _report_job(
    job_id: str,
    verdict: JobStatus,
    outcomes: dict[str, DatasetDone | BaseException],
    seconds: dict[str, float],
    results: list[JobResultEntry],
) -> None:
    """The job's results on the job run itself (Artifacts tab): a row per dataset, and what was retrieved (no
    download link: the presigned URLs are bearer links to the data, which every Prefect UI user could read there).
    For people: never fails the job."""
    rows = []
    for pid, outcome in outcomes.items():
        done = outcome if isinstance(outcome, DatasetDone) else DatasetDone()
        state = (
            f"failed: {type(outcome).__name__}"
            if isinstance(outcome, BaseException)
            else ("already archived" if done.note else "done")
        )
        rows.append(
            {
                "dataset": pid,
                "outcome": state,
                "datablocks": done.datablocks,
                "bytes": done.bytes,
                "seconds": round(seconds.get(pid, 0.0), 1),
            }
        )
    try:
        create_table_artifact(rows, key=artifact_key("job", job_id), description=f"Job {job_id}: {verdict.value}")
        if results:
            create_markdown_artifact(
                _retrieved_listing(job_id, results),
                key=artifact_key("retrieved-by-job", job_id),
                description=f"Retrieved by job {job_id}",
            )
    except Exception as e:
        get_run_logger().warning("job %s: summary artifacts not created: %s", job_id, e)


def _retrieved_listing(job_id: str, results: list[JobResultEntry]) -> str:
    """Markdown: each retrieved object with its size and checksum, when its link expires, where the links are."""
    lines = [
        f"# Retrieved by job {job_id}",
        "",
        "| dataset | name | type | bytes | checksum |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {e.dataset_id} | {e.name} | {e.type or 'datablock'} | {e.size} | "
        f"{f'{e.chk_alg}:{e.chk}' if e.chk else '-'} |"
        for e in results
    ]
    expiries = [when for e in results if (when := presigned_url_expiry(e.url)) is not None]
    if expiries:
        lines += ["", f"The download links expire {min(expiries):%Y-%m-%d %H:%M} UTC."]
    lines += [
        "",
        f"The download links and the download script are in SciCat's job result; fresh ones come from the "
        f"archiver API's `GET /jobs/{job_id}/links`; `archiver job` prints them when it follows a job. They "
        "are bearer links to the data and are never shown here.",
    ]
    return "\n".join(lines) + "\n"


def _summary(total: int, failures: dict[str, BaseException], notes: list[str]) -> str:
    if failures:
        details = "; ".join(f"{pid}: {describe_failure(e)}" for pid, e in failures.items())
        head = f"{len(failures)} of {total} dataset(s) failed: {details}"
    else:
        head = f"all {total} dataset(s) done"
    return "; ".join([head, *notes])[:2000]


CleanUp = Callable[[str, RunConfiguration, Connections, BaseException, logging.LoggerAdapter], None]
RemoveLeftovers = Callable[[str, RunConfiguration, Connections, logging.LoggerAdapter], None]


@dataclass(frozen=True)
class JobHooks:
    """What the flows do for a kind of job (config.deployments) once one of its runs was interrupted."""

    kind: JobKind
    clean_up: CleanUp  # one dataset of the job not finished: undo what is not done, report it failed
    remove_leftovers: RemoveLeftovers  # one dataset's files or uploads a dead run left half done


def finish_interrupted_job(
    hooks: JobHooks,
    job_id: str,
    dataset_ids: list[str] | None,
    reason: str,
    config: RunConfiguration,
    connections: Connections,
    log,
) -> bool:
    """Clean up every dataset of an interrupted job not yet done, report each failed, then the job
    finishedUnsuccessful with `reason`. Does nothing when SciCat already shows the job finished
    (another path got there first). Returns whether it reported the job."""
    scicat = connections.scicat
    if scicat.get_job(job_id).is_finished:
        log.info("job %s: already finished in SciCat; nothing to do", job_id)
        return False
    usable, _ = checked_pids(dataset_ids or scicat.get_job_dataset_pids(job_id))
    for pid in usable:  # each clean-up leaves a dataset that is done as it is
        hooks.clean_up(pid, config, connections, RuntimeError(reason), log)
    scicat.update_job_status(job_id, JobStatus.FINISHED_UNSUCCESSFUL, reason[:2000])
    log.warning("job %s: %s; datasets not finished were cleaned up and reported failed", job_id, reason)
    return True


def on_job_cancelled(hooks: JobHooks):
    """A cancellation hook for a job run (the runner or the engine runs it outside the cancelled code).
    A crashed run's hooks die with its container; the recover_job flow handles crashes."""

    def hook(flow, flow_run, state) -> None:
        log = flow_run_logger(flow_run, flow)
        config = load_run_configuration()
        with connect(config) as connections:
            finish_interrupted_job(
                hooks,
                flow_run.parameters[JOB_ID],
                flow_run.parameters.get(DATASET_IDS),
                f"{hooks.kind.noun} run {flow_run.name} {state.name.lower()}",
                config,
                connections,
                log,
            )

    return hook
