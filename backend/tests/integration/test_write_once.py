"""The LTS is written once, and what is archived is what SciCat lists: archive jobs run for real (Prefect server,
S3 server, the strict SciCat development server, an LTS folder) after an owner's ordinary SciCat calls."""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from archiver.clients.connections import connect
from archiver.config.runtime import load_run_configuration
from archiver.flows.archive import _clean_up_interrupted_archival, archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.packing import naming
from archiver.packing.archive import archive_datablock
from archiver.packing.planning import list_dataset_files, plan_datablocks
from archiver.scicat.models import DataFile, NewDatablock, NewOrigDatablock
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout

pytestmark = pytest.mark.integration


def archive(pipeline, pid: str) -> dict:
    """Run an archive job for `pid`; SciCat's job (v3 shape) after it."""
    job_id = pipeline.new_job("archive", [pid])
    try:
        archive_datasets_flow(job_id=job_id)
    except Exception:
        pass  # a failed job raises after its status is in SciCat; the tests read that
    return pipeline.job(job_id, "v3")


def lts_files(pipeline, pid: str) -> dict[str, str]:
    """Every file of the dataset's LTS folder (relative path -> sha256)."""
    folder = lts_layout.dataset_folder(pipeline.lts_root, pid)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def registered(pipeline, pid: str) -> list[tuple[str, str]]:
    return sorted((d.id, d.archive_id) for d in pipeline.scicat.get_datablocks(pid))


def owner_replaces_lifecycle(pipeline, pid: str) -> None:
    """An ordinary dataset PATCH: SciCat replaces the lifecycle, so its archive status is back at its default."""
    response = pipeline.scicat_dev.call(
        "PATCH", f"/api/v3/datasets/{quote(pid, safe='')}", json={"datasetlifecycle": {"retrievable": True}}
    )
    assert response.status_code == 200, response.text
    assert pipeline.scicat.get_dataset(pid).datasetlifecycle.archive_status_message == "datasetCreated"


def put_landing(pipeline, pid: str, path: str, data: bytes) -> DataFile:
    pipeline.s3.put_object(
        Bucket=pipeline.settings.s3.landingzone_bucket, Key=naming.landing_prefix(pid) + path, Body=data
    )
    return DataFile(path=path, size=len(data), time=datetime.now(UTC), chk=hashlib.sha256(data).hexdigest())


def test_a_changed_archived_dataset_is_refused_and_its_only_copy_stays(pipeline):
    pid = create_test_dataset_flow(num_files=2, file_size_mb=0.01)
    assert archive(pipeline, pid)["jobStatusMessage"] == "finishedSuccessful"
    archived, records = lts_files(pipeline, pid), registered(pipeline, pid)
    assert pipeline.landing_keys(pid) == []

    # the owner resets the lifecycle, lists file_0000.bin again with other bytes and uploads those
    owner_replaces_lifecycle(pipeline, pid)
    changed = put_landing(pipeline, pid, "file_0000.bin", os.urandom(5000))
    pipeline.scicat.create_origdatablock(pid, NewOrigDatablock(size=5000, chk_alg="sha256", data_file_list=[changed]))
    job = archive(pipeline, pid)

    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"
    assert f"dataset {pid} is archived" in job["jobStatusMessage"] + str(job.get("jobResultObject"))
    assert lts_files(pipeline, pid) == archived  # not a byte of the LTS changed, nothing set aside
    assert registered(pipeline, pid) == records
    assert pipeline.landing_keys(pid) == [naming.landing_prefix(pid) + "file_0000.bin"]  # the upload is left
    lifecycle = pipeline.scicat.get_dataset(pid).datasetlifecycle
    assert lifecycle.archive_status_message == "datasetCreated"  # the refusal touched nothing in SciCat


def test_an_unchanged_archived_dataset_archived_again_is_a_successful_no_op(pipeline):
    pid = create_test_dataset_flow(num_files=2, file_size_mb=0.01)
    archive(pipeline, pid)
    archived, records = lts_files(pipeline, pid), registered(pipeline, pid)
    owner_replaces_lifecycle(pipeline, pid)

    assert archive(pipeline, pid)["jobStatusMessage"] == "finishedSuccessful"
    assert lts_files(pipeline, pid) == archived and registered(pipeline, pid) == records
    lifecycle = pipeline.scicat.get_dataset(pid).datasetlifecycle
    assert (lifecycle.archive_status_message, lifecycle.retrievable) == ("datasetOnArchiveDisk", True)


def test_bytes_that_differ_from_the_listed_checksum_fail_the_dataset_as_the_owners_error(pipeline):
    pid = create_test_dataset_flow(num_files=3, file_size_mb=0.01)
    listed = {f.path: f.chk for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list}
    # same size, other bytes: only the checksum can tell
    size = pipeline.s3.head_object(
        Bucket=pipeline.settings.s3.landingzone_bucket, Key=naming.landing_prefix(pid) + "file_0001.bin"
    )["ContentLength"]
    other = put_landing(pipeline, pid, "file_0001.bin", os.urandom(size))

    job = archive(pipeline, pid)

    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"
    lifecycle = pipeline.scicat.get_dataset(pid).datasetlifecycle
    assert lifecycle.archive_status_message == "missingFilesError"
    message = str(lifecycle.archive_return_message)
    assert f"file_0001.bin (SciCat lists sha256 {listed['file_0001.bin']}, the landing zone has {other.chk})" in message
    assert registered(pipeline, pid) == []
    assert not any(name.endswith((".tar", ".partial")) for name in lts_files(pipeline, pid))
    assert len(pipeline.landing_keys(pid)) == 3


def test_a_rerun_after_the_owner_fixed_a_file_writes_it_under_a_new_name_and_sets_the_old_one_aside(pipeline):
    pid = create_test_dataset_flow(num_files=1, file_size_mb=0.01)
    bucket, key = pipeline.settings.s3.landingzone_bucket, naming.landing_prefix(pid) + "file_0000.bin"
    listed_bytes = pipeline.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    # an earlier archival wrote a datablock of other bytes and died before registering it; then the owner
    # uploaded the listed file again
    put_landing(pipeline, pid, "file_0000.bin", os.urandom(2000))
    (stale,) = plan_datablocks(pid, list_dataset_files(pipeline.s3, bucket, pid), 10**9)
    archive_datablock(pipeline.s3, bucket, stale, PosixLtsStore(pipeline.lts_root))
    stale_sha = lts_files(pipeline, pid)[f"datablocks/{naming.datablock_name(pid, 0)}"]
    put_landing(pipeline, pid, "file_0000.bin", listed_bytes)

    assert archive(pipeline, pid)["jobStatusMessage"] == "finishedSuccessful"
    ((_, archive_id),) = registered(pipeline, pid)
    assert archive_id == naming.archive_id(pid, 1)  # index 0 is taken: never written over
    files = lts_files(pipeline, pid)
    discarded = [(name, sha) for name, sha in files.items() if name.startswith("discarded/") and name.endswith(".tar")]
    assert [sha for _, sha in discarded] == [stale_sha]  # superseded, kept aside until pruned
    assert pipeline.landing_keys(pid) == []


def write_unregistered(pipeline, pid: str, target_bytes: int) -> list:
    """What an archival that died before registering leaves: every datablock written and verified on the LTS."""
    bucket = pipeline.settings.s3.landingzone_bucket
    blocks = plan_datablocks(pid, list_dataset_files(pipeline.s3, bucket, pid), target_bytes)
    return [archive_datablock(pipeline.s3, bucket, block, PosixLtsStore(pipeline.lts_root)) for block in blocks]


def test_an_unfinished_registration_is_completed_from_the_lts_without_writing(pipeline):
    pid = create_test_dataset_flow(num_files=3, file_size_mb=0.01)
    records = write_unregistered(pipeline, pid, 12_000)  # one file per datablock
    assert len(records) == 3
    first = NewDatablock.model_validate(records[0].model_dump(exclude={"datasetId"}))
    pipeline.scicat.create_datablock(pid, first)  # the run died after its first registration
    before = lts_files(pipeline, pid)

    assert archive(pipeline, pid)["jobStatusMessage"] == "finishedSuccessful"
    assert sorted(a for _, a in registered(pipeline, pid)) == sorted(r.archiveId for r in records)
    assert lts_files(pipeline, pid) == before  # nothing written, nothing set aside
    assert pipeline.landing_keys(pid) == []


def test_crash_recovery_removes_an_unfinished_registration_but_never_an_archived_datasets(pipeline):
    unfinished = create_test_dataset_flow(num_files=2, file_size_mb=0.01)
    record, _ = write_unregistered(pipeline, unfinished, 12_000)  # one file per datablock, one registered
    pipeline.scicat.create_datablock(unfinished, NewDatablock.model_validate(record.model_dump(exclude={"datasetId"})))
    archived = create_test_dataset_flow(num_files=2, file_size_mb=0.01)
    archive(pipeline, archived)
    records = registered(pipeline, archived)
    owner_replaces_lifecycle(pipeline, archived)
    added = put_landing(pipeline, archived, "added.bin", os.urandom(100))
    pipeline.scicat.create_origdatablock(archived, NewOrigDatablock(size=100, chk_alg="sha256", data_file_list=[added]))

    config = load_run_configuration()
    with connect(config) as connections:
        for pid in (unfinished, archived):
            _clean_up_interrupted_archival(
                pid, config, connections, RuntimeError("run crashed"), logging.getLogger("test")
            )

    assert registered(pipeline, unfinished) == []  # its datablock stays on the LTS for the next run
    assert lts_files(pipeline, unfinished)[f"datablocks/{naming.datablock_name(unfinished, 0)}"]
    assert registered(pipeline, archived) == records
    assert pipeline.scicat.get_dataset(archived).datasetlifecycle.archive_status_message == "datasetCreated"


def test_a_registration_whose_answer_was_lost_is_adopted_not_repeated(pipeline):
    pipeline.set_settings(ARCHIVER_TARGET_SIZE_MB=1)
    pid = create_test_dataset_flow(num_files=3, file_size_mb=0.4)  # 2 datablocks of 1 MB
    # the first registration reaches SciCat, its answer is lost (a gateway's 504)
    pipeline.scicat_dev.fail_next(1, 504, after=True, match="POST /api/v3/datasets/")

    assert archive(pipeline, pid)["jobStatusMessage"] == "finishedSuccessful"
    archive_ids = [a for _, a in registered(pipeline, pid)]
    assert len(archive_ids) == 2 and len(set(archive_ids)) == 2  # one record per datablock
    posts = [e for e in pipeline.scicat_dev.requests() if e["method"] == "POST" and e["path"].endswith("/datablocks")]
    assert [e.get("fault", False) for e in posts] == [True, False]  # the lost answer's record adopted, not sent again
