"""Retrieval: SciCat retrieve job -> datablocks streamed from the LTS into the retrieval bucket, checked on the way.

Users get presigned download URLs (signed for the external S3 endpoint) in the
job result, and nowhere in Prefect; nothing that failed its checksums is ever left in the bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prefect import flow
from prefect.logging import get_run_logger

from archiver.clients.connections import Connections, connect, open_lts
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import RETRIEVAL
from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.flows.concurrency import reconcile_tags
from archiver.flows.failures import describe_failure
from archiver.flows.figures import BYTES, DATABLOCKS, record_figures
from archiver.flows.jobs import DatasetDone, JobHooks, on_job_cancelled, run_job
from archiver.flows.lts_slices import LtsStream
from archiver.flows.lts_tasks import STORAGE_RETRY_DELAYS, bring_back_datablocks, may_retry_storage
from archiver.flows.on_record import ARCHIVED_LIFECYCLE, OnRecord, dataset_on_record
from archiver.flows.parallel import raise_first_error
from archiver.flows.progress import ProgressReporter
from archiver.flows.restores import DatablockStates
from archiver.flows.scicat_tasks import scicat_call
from archiver.packing import cleanup, naming
from archiver.packing.errors import DatasetUserError, RegistrationConflictError
from archiver.packing.partial import FileSelection, retrieve_files, select_files
from archiver.packing.records import DatablockRecord
from archiver.packing.registered import record_from_wire
from archiver.packing.retained import (
    check_budget,
    extend_retention,
    present_objects,
    remove_dead_run_objects,
    retain_until,
    retrieval_lock,
    try_retrieval_lock,
)
from archiver.packing.retrieve import RetrievedObject, expected_datablock, retrieve_datablock
from archiver.scicat.models import JobResultEntry, RetrieveStatus
from archiver.storage.lts_store import LtsStore
from archiver.storage.s3 import delete_keys, presigned_get_url

retry_refused_connections()  # before this flow run makes a Prefect client (clients/outage.py)

T = TypeVar("T")
R = TypeVar("R")


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
        raise NotArchivedError(
            pid, f"{len(missing)} of its files are in no registered datablock: {', '.join(missing[:5])}"
        )


def _download_link(key: str, config: RunConfiguration, connections: Connections) -> str:
    """A presigned GET URL of a retrieved object: a bearer link to the user's data, so it goes only into the job
    result in SciCat, never into an artifact or a log line that every Prefect UI user reads."""
    minio = config.settings.s3
    return presigned_get_url(
        minio.external_endpoint,
        minio.region,
        connections.presign_credentials,
        minio.retrieval_bucket,
        key,
        minio.url_expiration_s,
    )


def _upload_datablocks(
    pid: str,
    records: list[DatablockRecord],
    config: RunConfiguration,
    connections: Connections,
    store: LtsStore,
    states: DatablockStates,
) -> list[RetrievedObject]:
    settings = config.settings
    progress = ProgressReporter(f"retrieving {pid}: checked and uploaded", sum(r.packedSize for r in records))

    def copy(record: DatablockRecord) -> RetrievedObject:
        retrieved = retrieve_datablock(
            store,
            record.archiveId,
            connections.s3,
            settings.s3.retrieval_bucket,
            file_timeout_s=settings.lts.file_timeout_s,
            record=record,
            on_bytes=progress.add,
        )
        states.read(record.archiveId)
        return retrieved

    retrieved = _read_from_lts(
        f"retrieve datablocks of {pid}", records, lambda r: f"retrieval of {r.archiveId}", copy, config
    )
    progress.finish()
    return retrieved


def _upload_files(
    pid: str,
    selections: list[FileSelection],
    config: RunConfiguration,
    connections: Connections,
    store: LtsStore,
    states: DatablockStates,
) -> list[RetrievedObject]:
    """Partial retrieval: the selected files, one object each (packing.partial)."""
    settings = config.settings
    total = sum(f.size for s in selections for f in s.files)
    progress = ProgressReporter(f"retrieving {pid}: selected files checked and uploaded", total)

    def copy(selection: FileSelection) -> list[RetrievedObject]:
        retrieved = retrieve_files(
            store,
            selection,
            connections.s3,
            settings.s3.retrieval_bucket,
            file_timeout_s=settings.lts.file_timeout_s,
            on_bytes=progress.add,
        )
        states.read(selection.datablock.archiveId)
        return retrieved

    retrieved = _read_from_lts(
        f"retrieve files of {pid}",
        selections,
        lambda s: f"retrieval of {len(s.files)} file(s) of {s.datablock.archiveId}",
        copy,
        config,
    )
    progress.finish()
    return [obj for objects in retrieved for obj in objects]


def _read_from_lts(
    slice_name: str, items: Sequence[T], describe: Callable[[T], str], copy: Callable[[T], R], config: RunConfiguration
) -> list[R]:
    """`copy` of each item (a datablock or a selection of its files) inside slice task runs holding an
    LTS_TO_RETRIEVAL_LIMIT slot (flows/lts_slices.py), ARCHIVER_DATABLOCK_CONCURRENCY at once at most; a storage
    hiccup tried again after STORAGE_RETRY_DELAYS. Every item is tried; the first error is raised once all ended."""
    settings = config.settings
    stream = LtsStream(
        config.limits.LTS_TO_RETRIEVAL_LIMIT,
        describe,
        copy,
        settings.lts.slot_slice_s,
        slice_name,
        items=items,
        retry_delays=STORAGE_RETRY_DELAYS,
        may_retry=may_retry_storage,
    )
    return raise_first_error(stream.run(settings.archiver.datablock_concurrency))


@dataclass(frozen=True)
class _Wanted:
    """One download of the job: what it is, where it comes from, and the object it needs."""

    name: str
    archive_id: str
    is_file: bool
    expected: RetrievedObject


def _wanted(
    pid: str, store: LtsStore, records: list[DatablockRecord], selections: list[FileSelection] | None
) -> list[_Wanted]:
    if selections is None:
        return [_Wanted(Path(r.archiveId).name, r.archiveId, False, expected_datablock(store, r)) for r in records]
    return [
        _Wanted(
            f.path,
            s.datablock.archiveId,
            True,
            RetrievedObject(naming.retrieved_file_key(pid, f.path), f.size, s.datablock.chkAlg, f.chk),
        )
        for s in selections
        for f in s.files
    ]


def _missing_part(
    wanted: list[_Wanted],
    records: list[DatablockRecord],
    selections: list[FileSelection] | None,
    missing_keys: set[str],
):
    """The datablocks (or file selections) whose objects are not in the bucket yet."""
    if selections is None:
        return [r for r, w in zip(records, wanted, strict=True) if w.expected.key in missing_keys]
    narrowed = [
        FileSelection(
            s.datablock,
            [f for f in s.files if naming.retrieved_file_key(s.datablock.datasetId, f.path) in missing_keys],
        )
        for s in selections
    ]
    return [s for s in narrowed if s.files]


def _provide_copy(
    pid: str,
    records: list[DatablockRecord],
    selections: list[FileSelection] | None,
    config: RunConfiguration,
    connections: Connections,
    log,
) -> tuple[list[_Wanted], int]:
    """Make the dataset's retrieved copy (or the selected files) present and retained in the bucket, once
    for any number of jobs: the LTS brings back the datablocks to read, then under the dataset's retrieval lock
    what is there is reused and only what is missing uploaded. Returns what was wanted and the bytes uploaded.
    On failure, what this run uploaded is removed."""
    settings = config.settings
    s3, bucket = connections.s3, settings.s3.retrieval_bucket
    store = open_lts(settings.lts)
    wanted = _wanted(pid, store, records, selections)
    states = DatablockStates(pid, list(dict.fromkeys(w.archive_id for w in wanted)))
    try:
        _bring_back(pid, wanted, store, states, s3, bucket, config)
        return _provide_copy_under_lock(pid, wanted, records, selections, config, connections, store, states, log)
    finally:
        states.flush()


def _bring_back(
    pid: str,
    wanted: list[_Wanted],
    store: LtsStore,
    states: DatablockStates,
    s3,
    bucket: str,
    config: RunConfiguration,
) -> None:
    """Ask the LTS for every datablock the job will read, all at once, and wait until they are readable: not
    under the dataset's retrieval lock, so that concurrent jobs of the dataset wait for the same restores (one
    per datablock, whoever asked) rather than for the lock, whose wait (S3_RETRIEVAL_WAIT_S) a restore can
    outlast. Datablocks whose objects are in the bucket already are not read; a retrieval the bucket's budget
    has no room for fails before it asks for restores (they take hours and are billed)."""
    settings = config.settings
    present = {o.key for o in present_objects(s3, bucket, [w.expected for w in wanted])}
    needed = list(dict.fromkeys(w.archive_id for w in wanted if w.expected.key not in present))
    for archive_id in {w.archive_id for w in wanted} - set(needed):
        states.read(archive_id)
    if needed:
        missing_bytes = sum(w.expected.size for w in wanted if w.expected.key not in present)
        check_budget(s3, bucket, pid, missing_bytes, settings.s3.retrieval_budget_bytes)
        bring_back_datablocks(store, len(needed), needed, settings.lts.file_timeout_s, on_states=states.heard)


def _provide_copy_under_lock(
    pid: str,
    wanted: list[_Wanted],
    records: list[DatablockRecord],
    selections: list[FileSelection] | None,
    config: RunConfiguration,
    connections: Connections,
    store: LtsStore,
    states: DatablockStates,
    log,
) -> tuple[list[_Wanted], int]:
    settings = config.settings
    s3, bucket = connections.s3, settings.s3.retrieval_bucket
    wait_note = lambda: log.info("%s: another run retrieves this dataset; waiting for it (S3_RETRIEVAL_WAIT_S)", pid)  # noqa: E731
    with retrieval_lock(store, pid, settings.s3.retrieval_wait_s, on_wait=wait_note):
        present = present_objects(s3, bucket, [w.expected for w in wanted])
        missing_keys = {w.expected.key for w in wanted} - {o.key for o in present}
        missing = _missing_part(wanted, records, selections, missing_keys)
        uploaded = sum(w.expected.size for w in wanted if w.expected.key in missing_keys)
        if present:
            log.info(
                "%s: %d object(s) already in the retrieval bucket, checked by size and checksum: reused",
                pid,
                len(present),
            )
        if missing:
            check_budget(s3, bucket, pid, uploaded, settings.s3.retrieval_budget_bytes)
            aborted = cleanup.abort_retrieval_uploads(s3, bucket, pid)  # a dead run's: the lock says none is alive
            if aborted:
                log.warning("%s: %d unfinished upload(s) of an earlier retrieval aborted", pid, aborted)
            try:
                if selections is None:
                    _upload_datablocks(pid, missing, config, connections, store, states)
                else:
                    _upload_files(pid, missing, config, connections, store, states)
            except BaseException:
                _delete_quietly(s3, bucket, sorted(missing_keys), pid, log)
                raise
            finally:
                # Uploads of this run's failed tries whose abort did not reach S3 (it was down): under the lock
                # every unfinished upload of the dataset is this run's.
                _abort_quietly(s3, bucket, pid, log)
        until = retain_until(settings.s3.retrieval_retention_days)
        for w in wanted:
            extend_retention(s3, bucket, w.expected.key, until)
    return wanted, uploaded


def _abort_quietly(s3, bucket: str, pid: str, log) -> None:
    try:
        aborted = cleanup.abort_retrieval_uploads(s3, bucket, pid)
        if aborted:
            log.warning("%s: %d unfinished upload(s) of failed tries aborted", pid, aborted)
    except Exception as e:
        log.error("%s: unfinished uploads could not be aborted (the bucket's lifecycle rule will): %s", pid, e)


def _delete_quietly(s3, bucket: str, keys: list[str], pid: str, log) -> None:
    try:
        removed = delete_keys(s3, bucket, keys)
        if removed:
            log.warning("%s: %d object(s) of the failed retrieval removed from the retrieval bucket", pid, removed)
    except Exception as e:
        log.error("%s: retrieval bucket could not be cleaned: %s", pid, e)


def _entries(
    pid: str, wanted: list[_Wanted], config: RunConfiguration, connections: Connections
) -> list[JobResultEntry]:
    return [
        JobResultEntry(
            dataset_id=pid,
            name=w.name,
            size=w.expected.size,
            archive_id=w.archive_id,
            url=_download_link(w.expected.key, config, connections),
            type="file" if w.is_file else "datablock",
            chk_alg=w.expected.algorithm,
            chk=w.expected.chk,
        )
        for w in wanted
    ]


@flow(name=RETRIEVAL.dataset_flow, flow_run_name="retrieve-{dataset_id}-job-{job_id}")
def retrieve_dataset(
    job_id: str, dataset_id: str, config: RunConfiguration, files: list[str] | None = None
) -> DatasetDone:
    """Retrieve the whole dataset (a link per datablock), or only `files` (a link per file); a copy
    already in the retrieval bucket is reused (packing.retained)."""
    log = get_run_logger()
    pid = dataset_id
    with connect(config) as connections:
        scicat = connections.scicat
        try:
            on_record = dataset_on_record(pid, config, connections)
            _check_archived(pid, on_record)
            records = [record_from_wire(pid, d.to_wire()) for d in on_record.registered]
            selections = select_files(pid, records, files) if files else None
            scicat_call(
                f"{pid} retrieve started",
                scicat.update_lifecycle,
                pid,
                "set retrieve status started",
                retrieve_status_message=RetrieveStatus.STARTED,
                retrieve_integrity_check=False,
                **ARCHIVED_LIFECYCLE,
            )
            wanted, uploaded = _provide_copy(pid, records, selections, config, connections, log)
            entries = _entries(pid, wanted, config, connections)
            scicat_call(
                f"{pid} retrieved",
                scicat.update_lifecycle,
                pid,
                "set retrieve status datasetRetrieved",
                retrieve_status_message=RetrieveStatus.DATASET_RETRIEVED,
                retrieve_integrity_check=True,
                **ARCHIVED_LIFECYCLE,
            )
        except BaseException as error:
            _clean_up_failed_retrieval(pid, config, connections, error, log, delete_uploads=False)
            raise
    what = "datablock(s)" if selections is None else "file(s)"
    log.info("%s: %d %s retrieved and checked (%d bytes uploaded, the rest reused)", pid, len(entries), what, uploaded)
    # For the metrics: the bytes of the dataset's files handed out, whether uploaded now or reused.
    handed_out = (
        sum(d.size for d in on_record.registered) if selections is None else sum(w.expected.size for w in wanted)
    )
    datablocks = len({w.archive_id for w in wanted})
    record_figures({BYTES: handed_out, DATABLOCKS: datablocks})
    return DatasetDone(entries=entries, datablocks=datablocks, bytes=uploaded)


def _clean_up_failed_retrieval(
    pid: str, config: RunConfiguration, connections: Connections, error: BaseException, log, delete_uploads: bool = True
):
    """Remove what a dead run left in the retrieval bucket (when asked: a live run removes its own uploads);
    the dataset's archive state in SciCat is left as it is."""
    if delete_uploads:
        _remove_dead_run_objects(pid, config, connections, log)
    try:
        connections.scicat.update_lifecycle(
            pid,
            "set retrieve status datasetRetrievalFailed",
            retrieve_status_message=RetrieveStatus.DATASET_RETRIEVAL_FAILED,
            retrieve_integrity_check=False,
            retrieve_return_message=describe_failure(error)[:2000],
        )
    except Exception as e:
        log.error("%s: SciCat could not be told datasetRetrievalFailed: %s", pid, e)
    log.error("%s: retrieval failed: %s", pid, error)


def _remove_dead_run_objects(pid: str, config: RunConfiguration, connections: Connections, log) -> None:
    settings = config.settings
    try:
        removed = remove_dead_run_objects(connections.s3, settings.s3.retrieval_bucket, open_lts(settings.lts), pid)
    except Exception as e:
        log.error("%s: retrieval bucket could not be cleaned: %s", pid, e)
        return
    if removed is None:
        log.warning("%s: another run is retrieving the dataset; what is in the retrieval bucket is left to it", pid)
    elif removed:
        log.warning(
            "%s: %d object(s) of the interrupted retrieval removed from the retrieval bucket (copies "
            "handed out by finished jobs kept)",
            pid,
            removed,
        )


def _clean_up_interrupted_retrieval(pid, config, connections, error, log) -> None:
    lifecycle = connections.scicat.get_dataset(pid).datasetlifecycle
    if lifecycle and lifecycle.retrieve_status_message == RetrieveStatus.DATASET_RETRIEVED:
        return
    _clean_up_failed_retrieval(pid, config, connections, error, log)


def _abort_dead_uploads(pid: str, config: RunConfiguration, connections: Connections, log) -> None:
    """Unfinished uploads of a dead run, under the dataset's retrieval lock: a live run's uploads are its own."""
    settings = config.settings
    with try_retrieval_lock(open_lts(settings.lts), pid) as held:
        aborted = cleanup.abort_retrieval_uploads(connections.s3, settings.s3.retrieval_bucket, pid) if held else 0
    if not held:
        log.warning("%s: unfinished uploads left in place: another run is retrieving the dataset", pid)
    elif aborted:
        log.info("%s: aborted %d unfinished upload(s) to the retrieval bucket", pid, aborted)


RETRIEVAL_HOOKS = JobHooks(RETRIEVAL, _clean_up_interrupted_retrieval, _abort_dead_uploads)


@flow(
    name=RETRIEVAL.deployment.flow,
    flow_run_name="retrieve-job-{job_id}",
    on_cancellation=[on_job_cancelled(RETRIEVAL_HOOKS)],
)
def retrieve_datasets_flow(
    job_id: str,
    dataset_ids: list[str] | None = None,
    dataset_files: dict[str, list[str]] | None = None,
) -> list[JobResultEntry]:
    """Retrieve the datasets of a SciCat job into the retrieval bucket; the job result carries download URLs.
    `dataset_files`: per dataset the files to retrieve alone (the job's `datasetList[].files`)."""
    config = load_run_configuration()
    reconcile_tags(limit.tag for limit in config.limits.by_name().values())
    with connect(config) as connections:
        return run_job(
            job_id,
            dataset_ids,
            config,
            connections,
            lambda pid, files: retrieve_dataset(job_id=job_id, dataset_id=pid, config=config, files=files),
            dataset_files,
        )
