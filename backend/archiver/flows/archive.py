"""Archival: SciCat archive job -> datasets streamed from the landing zone into verified datablocks on the LTS.

Order of SciCat calls and the no-data-loss rules: docs/flows.md, "The order of things". The
landing zone is cleaned only after every datablock of the dataset is verified on
the LTS, registered in SciCat, and the lifecycle says datasetOnArchiveDisk.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import task_run

from archiver.clients.connections import Connections, connect, open_lts
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import ARCHIVAL
from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.errors import Verdict, is_system_fault, verdict_of
from archiver.flows.artifact_keys import artifact_key
from archiver.flows.cancellation import OwnershipCheck, RunCancelled, RunNotOwned, raise_if_cancelled
from archiver.flows.concurrency import reconcile_tags
from archiver.flows.failures import describe_failure
from archiver.flows.figures import BYTES, DATABLOCKS, record_figures
from archiver.flows.jobs import DatasetDone, JobHooks, on_job_cancelled, run_job
from archiver.flows.lts_slices import LtsStream
from archiver.flows.lts_tasks import (
    STORAGE_RETRY_DELAYS,
    may_retry_storage,
    set_aside_datablocks,
    tagged,
    verify_stored_datablock,
    wait_for_free_space,
)
from archiver.flows.on_record import ARCHIVED_LIFECYCLE, OnRecord, dataset_on_record
from archiver.flows.parallel import raise_first_error, run_alongside
from archiver.flows.progress import ProgressReporter
from archiver.flows.scicat_tasks import SCICAT_RETRIES, scicat_call
from archiver.flows.task_states import exception_of
from archiver.packing import cleanup, naming
from archiver.packing.archive import archive_datablock, datablocks_on_lts
from archiver.packing.errors import (
    ArchivedDatasetChangedError,
    ChecksumMismatchError,
    EmptyDatasetError,
    IntegrityError,
    RegistrationConflictError,
)
from archiver.packing.planning import (
    DatasetPlan,
    ListedFile,
    PlannedDatablock,
    SourceFile,
    check_expected_files,
    list_dataset_files,
    listed_by_path,
    plan_dataset_datablocks,
)
from archiver.packing.records import DatablockRecord, Manifest
from archiver.packing.registered import ArchiveDifferences, written_from
from archiver.scicat.models import ArchiveStatus, Datablock, NewDatablock
from archiver.storage import lts
from archiver.storage.lts_store import LtsStore

retry_refused_connections()  # before this flow run makes a Prefect client (clients/outage.py)

WRITING, VERIFYING = "writing", "verifying"  # the phases an archival's progress shows


@task(
    name="list-landing-zone",
    task_run_name="list landing-zone files of {pid}",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=lambda task, run, state: is_system_fault(exception_of(state)),
    cache_policy=NO_CACHE,
)
def list_landing_zone(s3, bucket: str, pid: str, listed: list[ListedFile]) -> list[SourceFile]:
    """The dataset's landing-zone files, checked against the files SciCat lists."""
    files = list_dataset_files(s3, bucket, pid)
    unlisted = check_expected_files(pid, files, listed_by_path(pid, listed)) if listed else []
    if unlisted:
        get_run_logger().warning(
            "%s: %d landing-zone file(s) not listed in SciCat are archived too: %s",
            pid,
            len(unlisted),
            ", ".join(unlisted[:10]),
        )
    return files


@task(
    name="clean-landing-zone",
    task_run_name="delete landing-zone files of {pid}",
    retries=3,
    retry_delay_seconds=10,
    cache_policy=NO_CACHE,
)
def clean_landing_zone(s3, bucket: str, pid: str) -> int:
    return cleanup.delete_landing_zone_files(s3, bucket, pid)


def _store_datablocks(
    pid: str,
    plan: DatasetPlan,
    listed: list[ListedFile],
    config: RunConfiguration,
    connections: Connections,
    lts_store: LtsStore,
    failed_verification: list[str],
    registered: set[str],
) -> list[Manifest]:
    """Verify the reused datablocks, then write the new ones while verifying those written; LTS access in
    time slices of the limits' tags (flows/lts_slices.py). Archive ids whose verification found a difference,
    registered ones excepted, are added to `failed_verification`."""
    settings, limits = config.settings, config.limits
    new_bytes = sum(b.packed_size for b in plan.new)
    dataset_bytes = sum(m.packedSize for m in plan.reused) + new_bytes
    progress = ProgressReporter(f"archiving {pid}", dataset_bytes, {WRITING: new_bytes, VERIFYING: dataset_bytes})
    written_bytes, verified_bytes = progress.counter(WRITING), progress.counter(VERIFYING)
    wait = tagged(wait_for_free_space, limits.LTS_FREE_LIMIT)
    checksums = {f.path: f.checksum for f in listed if f.checksum}
    # One wait for room per dataset: the timeout bounds all of its waits together, and once a datablock
    # found the LTS full the ones not started yet are not tried (ends_stream; the verified ones stay for a re-run).
    room_deadline = time.monotonic() + settings.lts.free_space_timeout_s
    still_owner = OwnershipCheck()
    workers = settings.archiver.datablock_concurrency

    def check(archive_id: str) -> Manifest:
        try:
            return verify_stored_datablock(lts_store, archive_id, settings.lts.file_timeout_s, verified_bytes)
        except IntegrityError:
            if archive_id not in registered:
                failed_verification.append(archive_id)
            raise

    def verifications(archive_ids: list[str] | None = None) -> LtsStream[str, Manifest]:
        return LtsStream(
            limits.VERIFY_LTS_LIMIT,
            lambda archive_id: f"verification of {archive_id}",
            check,
            settings.lts.slot_slice_s,
            f"verify datablocks of {pid}",
            items=archive_ids,
        )

    results = raise_first_error(verifications([m.archiveId for m in plan.reused]).run(workers))
    verifying = verifications()

    def write(block: PlannedDatablock) -> DatablockRecord:
        # The ownership check runs with the slot held: a run frozen while it waited, and taken for crashed
        # meanwhile, stops here instead of writing.
        still_owner()
        # The tagged wait (two Prefect API round trips for its slot) only when the LTS is short of room; a
        # bucket has none to run out of (and no folder at LTS_STORAGE_ROOT to measure).
        if lts_store.space_is_limited and not lts.has_free_space(
            settings.lts.storage_root, settings.lts.free_space_percentage
        ):
            wait(
                settings.lts.storage_root,
                settings.lts.free_space_percentage,
                max(0.0, room_deadline - time.monotonic()),
            )
        record = archive_datablock(
            connections.s3,
            settings.s3.landingzone_bucket,
            block,
            lts_store,
            settings.archiver.checksum_algorithm,
            on_bytes=written_bytes,
            listed={f.path: checksums[f.path] for f in block.files if f.path in checksums},
        )
        verifying.add(record.archiveId)
        return record

    writing = LtsStream(
        limits.MOVE_TO_LTS_LIMIT,
        lambda block: f"write of {block.archive_id}",
        write,
        settings.lts.slot_slice_s,
        f"write datablocks of {pid}",
        items=plan.new,
        retry_delays=STORAGE_RETRY_DELAYS,
        may_retry=may_retry_storage,
        ends_stream=lts.is_full,
    )
    written, checked = run_alongside(lambda: writing.run(workers), lambda: verifying.run(workers), then=verifying.close)
    stop = next((o for o in [*written, *checked] if isinstance(o, (RunCancelled, RunNotOwned))), None)
    if stop is not None:  # before any other error: a run that must stop leaves the clean-up to the job's owner
        raise stop
    mismatched = [f for outcome in written if isinstance(outcome, ChecksumMismatchError) for f in outcome.files]
    if mismatched:  # every file of every datablock, not only the first datablock's
        raise ChecksumMismatchError(pid, mismatched)
    in_plan_order = {block.archive_id: i for i, block in enumerate(plan.new)}
    raise_first_error(written)
    new = raise_first_error(checked)
    results += sorted(new, key=lambda manifest: in_plan_order[manifest.archiveId])
    progress.finish()
    return results


@task(name="register-datablock", task_run_name="scicat: register {manifest.archiveId}", **SCICAT_RETRIES)
def register_datablock(scicat, pid: str, manifest: Manifest) -> str:
    """Register one datablock; returns its SciCat id. A POST whose answer was lost may have registered it,
    so a retry first looks for the archive id among the dataset's datablocks and adopts what it finds
    (keeping one record where SciCat holds several of it): a datablock is never registered twice."""
    if task_run.run_count > 1:
        found = sorted(
            (d for d in scicat.get_datablocks(pid) if d.archive_id == manifest.archiveId), key=lambda d: d.id
        )
        if found:
            for extra in found[1:]:
                scicat.delete_datablock(pid, extra.id)
            return found[0].id
    new = NewDatablock.model_validate(manifest.record().model_dump(exclude={"datasetId"}))
    return scicat.create_datablock(pid, new).id


def _register(
    pid: str, manifests: list[Manifest], earlier: list[Datablock], connections: Connections, registered_now: list[str]
) -> None:
    """Register the datablocks SciCat does not list yet; `registered_now` collects the ids this run creates.
    Registrations already there stay (they are of datablocks in the plan: checked before)."""
    known = {d.archive_id for d in earlier}
    for manifest in manifests:
        if manifest.archiveId not in known:
            registered_now.append(register_datablock(connections.scicat, pid, manifest))


def _refusal_of_archived(
    pid: str,
    on_record: OnRecord,
    differences: ArchiveDifferences,
    s3,
    bucket: str,
) -> ArchivedDatasetChangedError | None:
    """Why an archive job must leave a dataset with registered datablocks as it is (None: it may go on,
    as the archival that registered them did not finish)."""
    if differences.changed:
        return ArchivedDatasetChangedError(pid, differences.changed)
    try:
        files = list_dataset_files(s3, bucket, pid)
    except EmptyDatasetError:
        files = []
    if written_from(on_record.registered_wire(), files):
        return None
    return ArchivedDatasetChangedError(pid, differences.not_archived)


@flow(name=ARCHIVAL.dataset_flow, flow_run_name="archive-{dataset_id}-job-{job_id}")
def archive_dataset(job_id: str, dataset_id: str, config: RunConfiguration) -> DatasetDone:
    log = get_run_logger()
    pid = dataset_id
    settings = config.settings
    bucket = settings.s3.landingzone_bucket
    store = open_lts(settings.lts)
    with connect(config) as connections:
        scicat = connections.scicat
        on_record = dataset_on_record(pid, config, connections)
        differences = on_record.differences()
        if on_record.registered and not on_record.archive.problems:
            if not differences.not_archived and not differences.changed:
                # Archived before (a lifecycle reset or a re-sent job): the LTS and SciCat stay as they are.
                scicat_call(
                    f"{pid} on archive disk",
                    scicat.update_lifecycle,
                    pid,
                    "restore archived state",
                    **archived_lifecycle(store),
                )
                note = (
                    f"dataset {pid} was already archived ({len(on_record.archive.matching)} datablock(s) registered "
                    "and on the LTS); nothing was rewritten"
                )
                log.info(note)
                return DatasetDone(note=note, datablocks=len(on_record.archive.matching))
            refusal = _refusal_of_archived(pid, on_record, differences, connections.s3, bucket)
            if refusal:  # the owner's error; nothing is touched, the lifecycle neither
                log.error("%s: archive job refused: %s", pid, refusal)
                raise refusal
        registered = {d.archive_id for d in on_record.registered}
        registered_now: list[str] = []
        failed_verification: list[str] = []
        try:
            if on_record.archive.problems:
                raise RegistrationConflictError(pid, on_record.archive.problems)
            scicat_call(
                f"{pid} archive started",
                scicat.update_lifecycle,
                pid,
                "set archive status started",
                archive_status_message=ArchiveStatus.STARTED,
                archivable=False,
                retrievable=False,
            )
            files = list_landing_zone(connections.s3, bucket, pid, on_record.listed)
            # One archival per dataset at a time, from planning to the landing zone's clean-up; what dead runs
            # left half-written is removed first.
            with store.lock_dataset(
                naming.datablocks_key(pid),
                settings.archiver.dataset_lock_wait_s,
                lambda lock: _waiting_for(pid, lock, settings, log),
            ) as leftovers:
                if leftovers:
                    log.warning(
                        "%s: %d half-written file(s) of a dead run removed: %s",
                        pid,
                        len(leftovers),
                        ", ".join(leftovers),
                    )
                on_lts = datablocks_on_lts(store, pid)
                plan = plan_dataset_datablocks(
                    pid,
                    files,
                    listed_by_path(pid, on_record.listed),
                    on_lts.manifests,
                    on_lts.taken_indices,
                    settings.archiver.target_size_bytes,
                    registered,
                )
                kept = {m.archiveId for m in plan.reused}
                if registered and (plan.new or not registered <= kept):
                    raise ArchivedDatasetChangedError(pid, differences.not_archived)
                log.info(
                    "%s: %d file(s): %d datablock(s) on the LTS reused, %d to write",
                    pid,
                    len(files),
                    len(plan.reused),
                    len(plan.new),
                )
                manifests = _store_datablocks(
                    pid, plan, on_record.listed, config, connections, store, failed_verification, registered
                )
                raise_if_cancelled()
                _register(pid, manifests, on_record.registered, connections, registered_now)
                scicat_call(
                    f"{pid} on archive disk",
                    scicat.update_lifecycle,
                    pid,
                    "set archive status datasetOnArchiveDisk",
                    **archived_lifecycle(store),
                )
                raise_if_cancelled()  # last check before the one step that cannot be undone
                _set_aside_superseded(pid, plan.superseded, store, log)
                _report_datablocks(pid, manifests)
                try:
                    deleted = clean_landing_zone(connections.s3, bucket, pid)
                    log.info("%s: archived; %d landing-zone file(s) deleted", pid, deleted)
                except Exception as e:  # the archive is complete and registered; only the cleanup is left to do
                    log.error(
                        "%s: archived, but its landing-zone files could not be deleted (delete them by hand): %s",
                        pid,
                        e,
                    )
        except RunNotOwned as error:
            log.warning("%s: %s", pid, error)
            raise
        except BaseException as error:
            _clean_up_failed_archival(pid, config, connections, registered_now, failed_verification, error, log)
            raise
    record_figures({BYTES: sum(m.size for m in manifests), DATABLOCKS: len(manifests)})
    return DatasetDone(datablocks=len(manifests), bytes=sum(m.packedSize for m in manifests))


def archived_lifecycle(store: LtsStore) -> dict:
    """The lifecycle of an archived dataset, naming the store that holds it (storageLocation)."""
    return {**ARCHIVED_LIFECYCLE, "storage_location": store.location}


def _waiting_for(pid: str, lock, settings, log) -> None:
    log.warning(
        "%s: another process holds %s (a run taken for crashed may still be alive); waiting up to %.0f s "
        "(ARCHIVER_DATASET_LOCK_WAIT_S) for it to let go",
        pid,
        lock,
        settings.archiver.dataset_lock_wait_s,
    )


def _set_aside_superseded(pid: str, archive_ids: list[str], store: LtsStore, log) -> None:
    """Datablocks of earlier, unfinished archivals that the registered set does not hold: never registered,
    and now known to be abandoned, so they go to `discarded/` (pruned after the retention time)."""
    if not archive_ids:
        return
    try:
        moved = cleanup.set_aside_datablocks(store, archive_ids)
        log.warning(
            "%s: %d datablock(s) of unfinished earlier archivals superseded, set aside: %s",
            pid,
            len(archive_ids),
            ", ".join(moved),
        )
    except Exception as e:  # the dataset is archived; they stay where they are, unregistered
        log.error("%s: superseded datablocks %s could not be set aside: %s", pid, ", ".join(archive_ids), e)


def _clean_up_failed_archival(
    pid: str,
    config: RunConfiguration,
    connections: Connections,
    registered_now: list[str],
    failed_verification: list[str],
    error: BaseException,
    log,
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
        moved = set_aside_datablocks(open_lts(config.settings.lts), failed_verification)
        if moved:
            log.warning("%s: datablocks that failed verification set aside in %s (never taken as archived)", pid, moved)
    except Exception as e:
        log.error("%s: datablocks could not be set aside on the LTS: %s", pid, e)
    status = (
        ArchiveStatus.MISSING_FILES_ERROR
        if verdict_of(error) is Verdict.USER
        else ArchiveStatus.SCHEDULE_ARCHIVE_JOB_FAILED
    )
    # Not archived: archivable again once fixed. A conflict leaves the flags to whoever resolves it.
    conflict = isinstance(error, (RegistrationConflictError, ArchivedDatasetChangedError))
    flags = {} if conflict else {"archivable": True, "retrievable": False}
    try:
        connections.scicat.update_lifecycle(
            pid,
            f"set archive status {status.value}",
            archive_status_message=status,
            archive_return_message=describe_failure(error)[:2000],
            **flags,
        )
    except Exception as e:
        log.error("%s: SciCat could not be told %s: %s", pid, status.value, e)
    log.error("%s: archival failed (%s): %s", pid, status.value, error)


def _report_datablocks(pid: str, manifests: list[Manifest]) -> None:
    rows = [
        {
            "datablock": m.archiveId.rsplit("/", 1)[-1],
            "files": len(m.dataFileList),
            "size": m.size,
            "packed size": m.packedSize,
            "checksum": f"{m.chkAlg}:{m.chk}",
        }
        for m in manifests
    ]
    try:
        create_table_artifact(rows, key=artifact_key("datablocks", pid), description=f"Datablocks of {pid} on the LTS")
    except Exception as e:  # the datablocks are registered in SciCat; the table is a convenience
        get_run_logger().warning("%s: datablock table artifact not created (Prefect API: %s)", pid, e)


def _clean_up_interrupted_archival(pid, config, connections, error, log) -> None:
    """After a run died or was cancelled. A dataset found archived is left as it is (its lifecycle set to
    say so), and so are the registrations of one archived before and changed since. Registrations of an
    archival that did not finish (the landing zone still holds their files as written) are an incomplete
    set and removed; their datablocks stay on the LTS for the next run to reuse."""
    on_record = dataset_on_record(pid, config, connections)
    if on_record.archive.problems:
        conflict = RegistrationConflictError(pid, on_record.archive.problems)
        _clean_up_failed_archival(pid, config, connections, [], [], conflict, log)
        return
    if on_record.registered:
        differences = on_record.differences()
        if not differences.changed and not differences.not_archived:
            connections.scicat.update_lifecycle(
                pid, "set archive status datasetOnArchiveDisk", **archived_lifecycle(open_lts(config.settings.lts))
            )
            return
        refusal = _refusal_of_archived(
            pid, on_record, differences, connections.s3, config.settings.s3.landingzone_bucket
        )
        if refusal:
            log.warning("%s: archived before and changed since; its registrations stay: %s", pid, refusal)
            return
    _clean_up_failed_archival(pid, config, connections, [str(d.id) for d in on_record.registered], [], error, log)


def _remove_half_written(pid: str, config: RunConfiguration, connections: Connections, log) -> None:
    """Half-written datablocks of a dead run, under the dataset's write lock: a writer still alive keeps its file."""
    try:
        with open_lts(config.settings.lts).lock_dataset(naming.datablocks_key(pid)) as removed:
            for name in removed:
                log.info("%s: removed half-written %s", pid, name)
    except lts.DatasetBusyError as e:
        log.warning("%s: half-written files left in place: %s", pid, e)


ARCHIVAL_HOOKS = JobHooks(ARCHIVAL, _clean_up_interrupted_archival, _remove_half_written)


@flow(
    name=ARCHIVAL.deployment.flow,
    flow_run_name="archive-job-{job_id}",
    on_cancellation=[on_job_cancelled(ARCHIVAL_HOOKS)],
)
def archive_datasets_flow(job_id: str, dataset_ids: list[str] | None = None) -> None:
    """Archive the datasets of a SciCat job (all of `jobParams.datasetList` unless `dataset_ids` names them)."""
    config = load_run_configuration()
    reconcile_tags(limit.tag for limit in config.limits.by_name().values())
    with connect(config) as connections:
        run_job(
            job_id,
            dataset_ids,
            config,
            connections,
            lambda pid, _files: archive_dataset(job_id=job_id, dataset_id=pid, config=config),
        )
