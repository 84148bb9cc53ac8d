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
    Connections, ProgressReporter, connect, exception_of, raise_if_cancelled, run_bounded_or_raise, scicat_call,
)
from archiver.flows.concurrency import reconcile_tags
from archiver.flows.jobs import JobKind, on_job_cancelled, run_job
from archiver.flows.lts_tasks import set_aside_datablocks, tagged, verify_datablock, wait_for_free_space, write_datablock
from archiver.packing import cleanup
from archiver.packing.errors import DatasetUserError
from archiver.packing.planning import PlannedDatablock, check_expected_files, list_dataset_files, plan_datablocks
from archiver.packing.records import Manifest
from archiver.scicat.models import ArchiveStatus, Datablock


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
) -> list[Manifest]:
    """Write and verify each datablock (bounded in parallel), LTS access limited by tag."""
    settings, limits = config.settings, config.limits
    progress = ProgressReporter(2 * sum(b.packed_size for b in blocks), f"archiving {pid}: written and verified bytes")
    wait = tagged(wait_for_free_space, limits.LTS_FREE_LIMIT)
    write = tagged(write_datablock, limits.MOVE_TO_LTS_LIMIT)
    verify = tagged(verify_datablock, limits.VERIFY_LTS_LIMIT)

    def store(block: PlannedDatablock) -> Manifest:
        wait(settings.lts.storage_root, settings.lts.free_space_percentage, settings.lts.free_space_timeout_s)
        record = write(connections.s3, settings.minio.landingzone_bucket, block, settings.lts.storage_root,
                       settings.archiver.checksum_algorithm, on_bytes=progress.add)
        return verify(settings.lts.storage_root, record.archiveId, settings.lts.file_timeout_s, on_bytes=progress.add)

    results = run_bounded_or_raise(store, blocks, settings.archiver.datablock_concurrency)
    progress.finish()
    return results


@flow(name="archive_dataset", flow_run_name="archive-{dataset_id}-job-{job_id}")
def archive_dataset(job_id: str, dataset_id: str, config: RunConfiguration) -> None:
    log = get_run_logger()
    pid = dataset_id
    registered: list[str] = []
    with connect(config) as connections:
        scicat = connections.scicat
        lifecycle = scicat_call(f"dataset {pid}", scicat.get_dataset, pid).datasetlifecycle
        if lifecycle and lifecycle.archive_status_message == ArchiveStatus.DATASET_ON_ARCHIVE_DISK:
            log.info("%s: already on the archive disk; nothing to do", pid)  # a re-run of a job that failed elsewhere
            return
        try:
            scicat_call(f"{pid} archive started", scicat.set_archive_status, pid, ArchiveStatus.STARTED)
            origdatablocks = scicat_call(f"origdatablocks of {pid}", scicat.get_origdatablocks, pid)
            expected = [(f.path, f.size) for block in origdatablocks for f in block.data_file_list]
            blocks = plan_dataset(connections.s3, config.settings.minio.landingzone_bucket, pid, expected,
                                  config.settings.archiver.target_size_bytes)
            log.info("%s: %d file(s) in %d datablock(s)", pid, sum(len(b.files) for b in blocks), len(blocks))
            manifests = _store_datablocks(pid, blocks, config, connections)

            raise_if_cancelled()
            known = {d.archive_id: d.id for d in scicat_call(f"datablocks of {pid}", scicat.get_datablocks, pid)}
            for manifest in manifests:
                if manifest.archiveId in known:  # registered by an earlier, interrupted run: adopted, not duplicated
                    registered.append(known[manifest.archiveId])
                    continue
                created = scicat_call(f"register {manifest.archiveId}", scicat.create_datablock, pid,
                                      Datablock.model_validate(manifest.record().model_dump()))
                registered.append(created.id)
            scicat_call(f"{pid} on archive disk", scicat.set_archive_status, pid,
                        ArchiveStatus.DATASET_ON_ARCHIVE_DISK, archivable=False, retrievable=True)
            raise_if_cancelled()  # last check before the one step that cannot be undone
        except BaseException as error:
            _clean_up_failed_archival(pid, config, connections, registered, error, log)
            raise
        _report_datablocks(pid, manifests)
        try:
            deleted = clean_landing_zone(connections.s3, config.settings.minio.landingzone_bucket, pid)
            log.info("%s: archived; %d landing-zone file(s) deleted", pid, deleted)
        except Exception as e:  # the archive is complete and registered; only the cleanup is left to do
            log.error("%s: archived, but its landing-zone files could not be deleted (delete them by hand): %s", pid, e)


def _clean_up_failed_archival(
    pid: str, config: RunConfiguration, connections: Connections, registered: list[str], error: BaseException, log,
) -> None:
    """Undo what this run did for the dataset; the landing zone is left as it was."""
    for datablock_id in registered:
        try:
            connections.scicat.delete_datablock(pid, datablock_id)
        except Exception as e:
            log.error("%s: datablock %s could not be removed from SciCat: %s", pid, datablock_id, e)
    try:
        moved = set_aside_datablocks(config.settings.lts.storage_root, pid)
        if moved:
            log.warning("%s: datablocks set aside in %s (never taken as archived)", pid, moved)
    except Exception as e:
        log.error("%s: datablocks could not be set aside on the LTS: %s", pid, e)
    status = (ArchiveStatus.MISSING_FILES_ERROR if isinstance(error, DatasetUserError)
              else ArchiveStatus.SCHEDULE_ARCHIVE_JOB_FAILED)
    try:
        connections.scicat.set_archive_status(pid, status, return_message=f"{type(error).__name__}: {error}"[:2000])
    except Exception as e:
        log.error("%s: SciCat could not be told %s: %s", pid, status.value, e)
    log.error("%s: archival failed (%s): %s", pid, status.value, error)


def _report_datablocks(pid: str, manifests: list[Manifest]) -> None:
    rows = [
        {"datablock": m.archiveId.rsplit("/", 1)[-1], "files": len(m.dataFileList), "size": m.size,
         "packed size": m.packedSize, "checksum": f"{m.chkAlg}:{m.chk}"}
        for m in manifests
    ]
    create_table_artifact(rows, description=f"Datablocks of {pid} on the LTS")


def _clean_up_interrupted_archival(pid, config, connections, error, log) -> None:
    # The run is gone: whatever datablocks a dataset not on the archive disk has were registered by it.
    ours = [d.id for d in connections.scicat.get_datablocks(pid)]
    _clean_up_failed_archival(pid, config, connections, ours, error, log)


ARCHIVAL = JobKind(
    "archival",
    lambda lifecycle: bool(lifecycle) and lifecycle.archive_status_message == ArchiveStatus.DATASET_ON_ARCHIVE_DISK,
    _clean_up_interrupted_archival,
)


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
                lambda pid: archive_dataset(job_id=job_id, dataset_id=pid, config=config))
