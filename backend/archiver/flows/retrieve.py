"""Retrieval: SciCat retrieve job -> datablocks streamed from the LTS into the retrieval bucket, checked on the way.

Users get presigned download URLs (signed for the external S3 endpoint) in the
job result; nothing that failed its checksums is ever left in the bucket.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_link_artifact
from prefect.logging import get_run_logger

from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.flows.common import (
    ARCHIVED_LIFECYCLE, Connections, OnRecord, ProgressReporter, connect, dataset_on_record, run_bounded_or_raise,
    scicat_call,
)
from archiver.flows.concurrency import reconcile_tags
from archiver.flows.failures import describe_failure
from archiver.flows.jobs import DatasetDone, JobKind, on_job_cancelled, run_job
from archiver.flows.lts_tasks import copy_datablock_to_retrieval, copy_files_to_retrieval, tagged
from archiver.packing import cleanup
from archiver.packing.errors import DatasetUserError, RegistrationConflictError
from archiver.packing.partial import FileSelection, select_files
from archiver.packing.registered import record_from_wire
from archiver.packing.retrieve import RetrievedObject
from archiver.scicat.models import Datablock, JobResultEntry, RetrieveStatus
from archiver.storage.s3 import presigned_get_url


class NotArchivedError(DatasetUserError):
    def __init__(self, pid: str, why: str):
        super().__init__(f"dataset {pid} is not archived ({why}); archive it before retrieving it")


def _check_archived(pid: str, on_record: OnRecord) -> None:
    """Retrieve only a dataset whose registered datablocks are on the LTS and hold all its files."""
    if not on_record.registered:
        raise NotArchivedError(pid, "it has no datablocks in SciCat")
    if on_record.archive.problems:
        raise RegistrationConflictError(pid, on_record.archive.problems)
    if on_record.archive.missing_files:
        missing = on_record.archive.missing_files
        raise NotArchivedError(pid, f"{len(missing)} of its files are in no registered datablock: {', '.join(missing[:5])}")


def _download_link(pid: str, retrieved: RetrievedObject, what: str, config: RunConfiguration,
                   connections: Connections) -> str:
    minio = config.settings.minio
    url = presigned_get_url(minio.external_endpoint, minio.region, connections.presign_credentials,
                            minio.retrieval_bucket, retrieved.key, minio.url_expiration_s)
    try:
        create_link_artifact(url, link_text=f"{pid}: {what}", description=f"Download of {what} of {pid}")
    except Exception as e:  # the URL goes to SciCat in the job result; the artifact is a convenience
        get_run_logger().warning("%s: link artifact of %s not created (Prefect API: %s)", pid, what, e)
    return url


def _retrieve_datablocks(
    pid: str, datablocks: list[Datablock], config: RunConfiguration, connections: Connections,
) -> list[JobResultEntry]:
    settings = config.settings
    copy = tagged(copy_datablock_to_retrieval, config.limits.LTS_TO_RETRIEVAL_LIMIT)
    progress = ProgressReporter(sum(d.packed_size for d in datablocks), f"retrieving {pid}: checked and uploaded")

    def retrieve_one(datablock: Datablock) -> JobResultEntry:
        record = record_from_wire(pid, datablock.to_wire())
        retrieved = copy(settings.lts.storage_root, datablock.archive_id, connections.s3, settings.minio.retrieval_bucket,
                         settings.lts.file_timeout_s, record, on_bytes=progress.add)
        name = retrieved.key.rsplit("/", 1)[-1]
        url = _download_link(pid, retrieved, f"datablock {name}", config, connections)
        return JobResultEntry(dataset_id=pid, name=name, size=datablock.packed_size, archive_id=datablock.archive_id,
                              url=url, type="datablock", chk_alg=retrieved.algorithm, chk=retrieved.chk)

    results = run_bounded_or_raise(retrieve_one, datablocks, settings.archiver.datablock_concurrency)
    progress.finish()
    return results


def _retrieve_files(
    pid: str, selections: list[FileSelection], config: RunConfiguration, connections: Connections,
) -> list[JobResultEntry]:
    """Partial retrieval: the selected files, one object and one link each (packing.partial)."""
    settings = config.settings
    copy = tagged(copy_files_to_retrieval, config.limits.LTS_TO_RETRIEVAL_LIMIT)
    total = sum(f.size for s in selections for f in s.files)
    progress = ProgressReporter(total, f"retrieving {pid}: selected files checked and uploaded")

    def retrieve_some(selection: FileSelection) -> list[JobResultEntry]:
        archive_id = selection.datablock.archiveId
        retrieved = copy(settings.lts.storage_root, archive_id, len(selection.files), selection, connections.s3,
                         settings.minio.retrieval_bucket, settings.lts.file_timeout_s, on_bytes=progress.add)
        return [JobResultEntry(dataset_id=pid, name=file.path, size=file.size, archive_id=archive_id,
                               url=_download_link(pid, obj, f"file {file.path}", config, connections), type="file",
                               chk_alg=obj.algorithm, chk=obj.chk)
                for file, obj in zip(selection.files, retrieved, strict=True)]

    results = run_bounded_or_raise(retrieve_some, selections, settings.archiver.datablock_concurrency)
    progress.finish()
    return [entry for entries in results for entry in entries]


@flow(name="retrieve_dataset", flow_run_name="retrieve-{dataset_id}-job-{job_id}")
def retrieve_dataset(job_id: str, dataset_id: str, config: RunConfiguration, files: list[str] | None = None) -> DatasetDone:
    """Retrieve the whole dataset (a link per datablock), or only `files` (a link per file)."""
    log = get_run_logger()
    pid = dataset_id
    with connect(config) as connections:
        scicat = connections.scicat
        uploading = False
        try:
            on_record = dataset_on_record(pid, config, connections)
            _check_archived(pid, on_record)
            selections = select_files(pid, [record_from_wire(pid, d.to_wire()) for d in on_record.registered],
                                      files) if files else None
            scicat_call(f"{pid} retrieve started", scicat.update_lifecycle, pid, "set retrieve status started",
                        retrieve_status_message=RetrieveStatus.STARTED, retrieve_integrity_check=False,
                        **ARCHIVED_LIFECYCLE)
            aborted = cleanup.abort_retrieval_uploads(connections.s3, config.settings.minio.retrieval_bucket, pid)
            if aborted:
                log.warning("%s: %d unfinished upload(s) of an earlier retrieval aborted", pid, aborted)
            uploading = True
            if selections is None:
                entries = _retrieve_datablocks(pid, on_record.registered, config, connections)
            else:
                entries = _retrieve_files(pid, selections, config, connections)
            scicat_call(f"{pid} retrieved", scicat.update_lifecycle, pid, "set retrieve status datasetRetrieved",
                        retrieve_status_message=RetrieveStatus.DATASET_RETRIEVED, retrieve_integrity_check=True,
                        **ARCHIVED_LIFECYCLE)
        except BaseException as error:
            _clean_up_failed_retrieval(pid, config, connections, error, log, delete_uploads=uploading)
            raise
    what = "datablock(s)" if selections is None else "file(s)"
    log.info("%s: %d %s retrieved and checked", pid, len(entries), what)
    return DatasetDone(entries=entries, datablocks=len(selections if selections is not None else entries),
                       bytes=sum(e.size for e in entries))


def _clean_up_failed_retrieval(pid: str, config: RunConfiguration, connections: Connections, error: BaseException, log,
                               delete_uploads: bool = True):
    """Remove what was uploaded (when anything may have been); the dataset's archive state in SciCat is left as it is."""
    try:
        removed = cleanup.delete_retrieved(connections.s3, config.settings.minio.retrieval_bucket, pid) if delete_uploads else 0
        if removed:
            log.warning("%s: %d object(s) removed from the retrieval bucket", pid, removed)
    except Exception as e:
        log.error("%s: retrieval bucket could not be cleaned: %s", pid, e)
    try:
        connections.scicat.update_lifecycle(
            pid, "set retrieve status datasetRetrievalFailed", retrieve_status_message=RetrieveStatus.DATASET_RETRIEVAL_FAILED,
            retrieve_integrity_check=False, retrieve_return_message=describe_failure(error)[:2000],
        )
    except Exception as e:
        log.error("%s: SciCat could not be told datasetRetrievalFailed: %s", pid, e)
    log.error("%s: retrieval failed: %s", pid, error)


def _clean_up_interrupted_retrieval(pid, config, connections, error, log) -> None:
    lifecycle = connections.scicat.get_dataset(pid).datasetlifecycle
    if lifecycle and lifecycle.retrieve_status_message == RetrieveStatus.DATASET_RETRIEVED:
        return
    _clean_up_failed_retrieval(pid, config, connections, error, log)


RETRIEVAL = JobKind("retrieval", _clean_up_interrupted_retrieval)


@flow(
    name="retrieve_datasetlist",
    flow_run_name="retrieve-job-{job_id}",
    on_cancellation=[on_job_cancelled(RETRIEVAL)],
)
def retrieve_datasets_flow(
    job_id: str, dataset_ids: list[str] | None = None, dataset_files: dict[str, list[str]] | None = None,
) -> list[JobResultEntry]:
    """Retrieve the datasets of a SciCat job into the retrieval bucket; the job result carries download URLs.
    `dataset_files`: per dataset the files to retrieve alone (the job's `datasetList[].files`)."""
    config = load_run_configuration()
    reconcile_tags(limit.tag for limit in config.limits.by_name().values())
    with connect(config) as connections:
        return run_job(job_id, dataset_ids, config, connections,
                       lambda pid, files: retrieve_dataset(job_id=job_id, dataset_id=pid, config=config, files=files),
                       dataset_files)
