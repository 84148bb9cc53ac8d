"""Archival: SciCat archive job -> datasets streamed from the landing zone into verified datablocks on the LTS.

Order of SciCat calls and the no-data-loss rules follow SCICAT_PROTOCOL.md: the
landing zone is cleaned only after every datablock of the dataset is verified on
the LTS, registered in SciCat, and the lifecycle says datasetOnArchiveDisk.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.flows.common import (
    ARCHIVED_LIFECYCLE, Connections, ProgressReporter, connect, dataset_on_record, exception_of, raise_if_cancelled,
    run_bounded_or_raise, scicat_call,
)
from archiver.flows.concurrency import reconcile_tags
from archiver.flows.failures import describe_failure
from archiver.flows.figures import BYTES, DATABLOCKS, record_figures
from archiver.flows.jobs import DatasetDone, JobKind, on_job_cancelled, run_job
from archiver.flows.lts_tasks import set_aside_datablocks, tagged, verify_datablock, wait_for_free_space, write_datablock
from archiver.packing import cleanup
from archiver.packing.archive import claim_datablocks_folder
from archiver.packing.errors import DatasetUserError, IntegrityError, RegistrationConflictError
from archiver.packing.planning import PlannedDatablock, check_expected_files, list_dataset_files, plan_datablocks
from archiver.packing.records import Manifest
from archiver.packing.registered import record_from_wire, same_datablock
from archiver.scicat.models import ArchiveStatus, Datablock, NewDatablock
from archiver.storage import lts


@task(name="plan-datablocks", task_run_name="plan datablocks of {pid}", retries=2, retry_delay_seconds=10,
      retry_condition_fn=lambda task, run, state: not isinstance(exception_of(state), DatasetUserError),
      cache_policy=NO_CACHE)
def plan_dataset(s3, bucket: str, pid: str, expected: list[tuple[str, int | None]], target_size_bytes: int):
    files = list_dataset_files(s3, bucket, pid)
    unlisted = check_expected_files(pid, files, expected) if expected else []
    if unlisted:
        get_run_logger().warning("%s: %d landing-zone file(s) not listed in SciCat are archived too: %s",
                                 pid, len(unlisted), ", ".join(unlisted[:10]))
    return plan_datablocks(pid, files, target_size_bytes)


@task(name="clean-landing-zone", task_run_name="delete landing-zone files of {pid}", retries=3, retry_delay_seconds=10,
      cache_policy=NO_CACHE)
def clean_landing_zone(s3, bucket: str, pid: str) -> int:
    return cleanup.delete_landing_zone_files(s3, bucket, pid)


def _store_datablocks(
    pid: str, blocks: list[PlannedDatablock], config: RunConfiguration, connections: Connections,
    failed_verification: list[str],
) -> list[Manifest]:
    """Write and verify each datablock (bounded in parallel), LTS access limited by tag.
    Archive ids whose verification found a difference are added to `failed_verification`."""
    settings, limits = config.settings, config.limits
    progress = ProgressReporter(2 * sum(b.packed_size for b in blocks), f"archiving {pid}: written and verified")
    wait = tagged(wait_for_free_space, limits.LTS_FREE_LIMIT)
    write = tagged(write_datablock, limits.MOVE_TO_LTS_LIMIT)
    verify = tagged(verify_datablock, limits.VERIFY_LTS_LIMIT)

    def store(block: PlannedDatablock) -> Manifest:
        # The tagged wait (two Prefect API round trips for its slot) only when the LTS is short of room.
        if not lts.has_free_space(settings.lts.storage_root, settings.lts.free_space_percentage):
            wait(settings.lts.storage_root, settings.lts.free_space_percentage, settings.lts.free_space_timeout_s)
        record = write(connections.s3, settings.minio.landingzone_bucket, block, settings.lts.storage_root,
                       settings.archiver.checksum_algorithm, on_bytes=progress.add)
        try:
            return verify(settings.lts.storage_root, record.archiveId, settings.lts.file_timeout_s, on_bytes=progress.add)
        except IntegrityError:
            failed_verification.append(record.archiveId)
            raise

    # One writer per dataset at a time; what dead runs left half-written is removed first.
    with claim_datablocks_folder(settings.lts.storage_root, pid) as leftovers:
        if leftovers:
            get_run_logger().warning("%s: %d half-written file(s) of a dead run removed: %s",
                                     pid, len(leftovers), ", ".join(p.name for p in leftovers))
        results = run_bounded_or_raise(store, blocks, settings.archiver.datablock_concurrency)
    progress.finish()
    return results


def _register(pid: str, manifests: list[Manifest], earlier: list[Datablock], connections: Connections,
              registered_now: list[str], log) -> None:
    """Register the dataset's datablocks. Registrations left by an interrupted archival (the dataset was
    not archived, so they are an incomplete set) are kept where they describe a written datablock and
    removed where they no longer do; `registered_now` collects the ids this run creates."""
    scicat = connections.scicat
    written = {m.archiveId: m for m in manifests}
    kept = set()
    for d in earlier:
        manifest = written.get(d.archive_id)
        if manifest is not None and same_datablock(record_from_wire(pid, d.to_wire()), manifest.record()):
            kept.add(d.archive_id)
        else:
            log.warning("%s: removing registration %s left by an interrupted archival (it no longer matches)", pid, d.archive_id)
            scicat_call(f"remove stale {d.archive_id}", scicat.delete_datablock, pid, d.id)
    for manifest in manifests:
        if manifest.archiveId not in kept:
            created = scicat_call(f"register {manifest.archiveId}", scicat.create_datablock, pid,
                                  NewDatablock.model_validate(manifest.record().model_dump(exclude={"datasetId"})))
            registered_now.append(created.id)


@flow(name="archive_dataset", flow_run_name="archive-{dataset_id}-job-{job_id}")
def archive_dataset(job_id: str, dataset_id: str, config: RunConfiguration) -> DatasetDone:
    log = get_run_logger()
    pid = dataset_id
    with connect(config) as connections:
        scicat = connections.scicat
        on_record = dataset_on_record(pid, config, connections)
        if on_record.archive.complete:
            # Archived before (a lifecycle reset or a re-sent job): the LTS and SciCat stay as they are.
            scicat_call(f"{pid} on archive disk", scicat.update_lifecycle, pid, "restore archived state",
                        **ARCHIVED_LIFECYCLE)
            note = (f"dataset {pid} was already archived ({len(on_record.archive.matching)} datablock(s) registered and on the "
                    "LTS); nothing was rewritten")
            log.info(note)
            return DatasetDone(note=note, datablocks=len(on_record.archive.matching))
        registered_now: list[str] = []
        failed_verification: list[str] = []
        try:
            if on_record.archive.problems:
                raise RegistrationConflictError(pid, on_record.archive.problems)
            scicat_call(f"{pid} archive started", scicat.update_lifecycle, pid, "set archive status started",
                        archive_status_message=ArchiveStatus.STARTED, archivable=False, retrievable=False)
            blocks = plan_dataset(connections.s3, config.settings.minio.landingzone_bucket, pid, on_record.listed,
                                  config.settings.archiver.target_size_bytes)
            log.info("%s: %d file(s) in %d datablock(s)", pid, sum(len(b.files) for b in blocks), len(blocks))
            manifests = _store_datablocks(pid, blocks, config, connections, failed_verification)

            raise_if_cancelled()
            _register(pid, manifests, on_record.registered, connections, registered_now, log)
            scicat_call(f"{pid} on archive disk", scicat.update_lifecycle, pid, "set archive status datasetOnArchiveDisk",
                        **ARCHIVED_LIFECYCLE)
            raise_if_cancelled()  # last check before the one step that cannot be undone
        except BaseException as error:
            _clean_up_failed_archival(pid, config, connections, registered_now, failed_verification, error, log)
            raise
        _report_datablocks(pid, manifests)
        try:
            deleted = clean_landing_zone(connections.s3, config.settings.minio.landingzone_bucket, pid)
            log.info("%s: archived; %d landing-zone file(s) deleted", pid, deleted)
        except Exception as e:  # the archive is complete and registered; only the cleanup is left to do
            log.error("%s: archived, but its landing-zone files could not be deleted (delete them by hand): %s", pid, e)
    record_figures({BYTES: sum(m.size for m in manifests), DATABLOCKS: len(manifests)})
    return DatasetDone(datablocks=len(manifests), bytes=sum(m.packedSize for m in manifests))


def _clean_up_failed_archival(
    pid: str, config: RunConfiguration, connections: Connections, registered_now: list[str],
    failed_verification: list[str], error: BaseException, log,
) -> None:
    """Undo what this run did for the dataset and nothing else: its registrations are removed and its
    datablocks that failed verification set aside. Verified datablocks stay for the next run to reuse;
    the landing zone is left as it was."""
    for datablock_id in registered_now:
        try:
            connections.scicat.delete_datablock(pid, datablock_id)
        except Exception as e:
            log.error("%s: datablock %s could not be removed from SciCat: %s", pid, datablock_id, e)
    try:
        moved = set_aside_datablocks(config.settings.lts.storage_root, failed_verification)
        if moved:
            log.warning("%s: datablocks that failed verification set aside in %s (never taken as archived)", pid, moved)
    except Exception as e:
        log.error("%s: datablocks could not be set aside on the LTS: %s", pid, e)
    status = (ArchiveStatus.MISSING_FILES_ERROR if isinstance(error, DatasetUserError)
              else ArchiveStatus.SCHEDULE_ARCHIVE_JOB_FAILED)
    # Not archived: archivable again once fixed. A conflict leaves the flags to whoever resolves it.
    flags = {} if isinstance(error, RegistrationConflictError) else {"archivable": True, "retrievable": False}
    try:
        connections.scicat.update_lifecycle(pid, f"set archive status {status.value}", archive_status_message=status,
                                            archive_return_message=describe_failure(error)[:2000], **flags)
    except Exception as e:
        log.error("%s: SciCat could not be told %s: %s", pid, status.value, e)
    log.error("%s: archival failed (%s): %s", pid, status.value, error)


def _report_datablocks(pid: str, manifests: list[Manifest]) -> None:
    rows = [
        {"datablock": m.archiveId.rsplit("/", 1)[-1], "files": len(m.dataFileList), "size": m.size,
         "packed size": m.packedSize, "checksum": f"{m.chkAlg}:{m.chk}"}
        for m in manifests
    ]
    try:
        create_table_artifact(rows, description=f"Datablocks of {pid} on the LTS")
    except Exception as e:  # the datablocks are registered in SciCat; the table is a convenience
        get_run_logger().warning("%s: datablock table artifact not created (Prefect API: %s)", pid, e)


def _clean_up_interrupted_archival(pid, config, connections, error, log) -> None:
    """After a run died or was cancelled: a dataset found archived is left as it is (its lifecycle set
    to say so); otherwise its registrations are an incomplete set left by the run and removed."""
    on_record = dataset_on_record(pid, config, connections)
    if on_record.archive.complete:
        connections.scicat.update_lifecycle(pid, "set archive status datasetOnArchiveDisk", **ARCHIVED_LIFECYCLE)
        return
    if on_record.archive.problems:
        conflict = RegistrationConflictError(pid, on_record.archive.problems)
        _clean_up_failed_archival(pid, config, connections, [], [], conflict, log)
        return
    _clean_up_failed_archival(pid, config, connections, [d.id for d in on_record.registered], [], error, log)


ARCHIVAL = JobKind("archival", _clean_up_interrupted_archival)


@flow(
    name="archive_datasetlist",
    flow_run_name="archive-job-{job_id}",
    on_cancellation=[on_job_cancelled(ARCHIVAL)],
)
def archive_datasets_flow(job_id: str, dataset_ids: list[str] | None = None) -> None:
    """Archive the datasets of a SciCat job (all of `jobParams.datasetList` unless `dataset_ids` names them)."""
    config = load_run_configuration()
    reconcile_tags(limit.tag for limit in config.limits.by_name().values())
    with connect(config) as connections:
        run_job(job_id, dataset_ids, config, connections,
                lambda pid, _files: archive_dataset(job_id=job_id, dataset_id=pid, config=config))
