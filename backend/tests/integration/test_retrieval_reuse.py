"""One retrieved copy per dataset: a later retrieval reuses it and extends its retention, two retrievals at
once do the work once, a copy that differs from the registered checksums is not reused, and a retrieval
that would overfill the bucket's budget fails saying so. LTS reads are seen through Python's audit hook."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing import naming
from archiver.packing.retained import read_retain_until
from tests import lts_layout
from tests.integration import test_partial_retrieval as recording
from tests.integration.test_flows import _artifacts_of, job_of, new_dataset
from tests.integration.test_partial_retrieval import retrieval_calls

pytestmark = pytest.mark.integration

RETRIEVE_CALLS = [
    ("GET", "datablocks", None),
    ("GET", "origdatablocks", None),
    ("GET", "dataset", None),
    ("PATCH", "dataset", "started"),
    ("GET", "dataset", None),
    ("PATCH", "dataset", "datasetRetrieved"),
]


def objects(pipeline, pid: str) -> dict[str, dict]:
    bucket = pipeline.settings.s3.retrieval_bucket
    return {
        key: {
            "modified": pipeline.s3.head_object(Bucket=bucket, Key=key)["LastModified"],
            "until": read_retain_until(pipeline.s3, bucket, key),
        }
        for key in pipeline.retrieval_keys(pid)
    }


def downloads_ok(pipeline, job_id: str) -> bool:
    job = job_of(pipeline, job_id)
    return job["jobStatusMessage"] == "finishedSuccessful" and all(
        len(httpx.get(e["url"], timeout=60).raise_for_status().content) == e["size"]
        for e in job["jobResultObject"]["result"]
    )


@pytest.fixture
def archived(pipeline) -> str:
    pid = new_dataset(3, 0.3)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    return pid


def test_a_second_retrieval_reuses_the_copy_and_extends_its_retention(pipeline, archived):
    pid = archived
    first = pipeline.new_job("retrieve", [pid])
    retrieve_datasets_flow(job_id=first)
    before = objects(pipeline, pid)
    now = datetime.now(UTC)
    assert before and all(now + timedelta(days=13) < o["until"] < now + timedelta(days=15) for o in before.values())
    pipeline.set_settings(S3_RETRIEVAL_RETENTION_DAYS=30)
    start = pipeline.scicat_dev.state()["nextSeq"] - 1
    second = pipeline.new_job("retrieve", [pid])

    state, _, tars = recording.retrieve_recording_reads(pipeline, second)
    scicat_calls = retrieval_calls(pipeline, start)

    assert state.is_completed() and tars == set()  # nothing read from the LTS
    after = objects(pipeline, pid)
    assert after.keys() == before.keys()
    for key, obj in after.items():
        assert obj["modified"] == before[key]["modified"]  # not uploaded again
        assert obj["until"] > now + timedelta(days=29)  # retention extended
    assert downloads_ok(pipeline, first) and downloads_ok(pipeline, second)
    assert scicat_calls == [
        ("POST", "job", None),
        ("PATCH", "job", "inProgress"),
        ("GET", "job", None),
        *RETRIEVE_CALLS,
        ("PATCH", "job", "finishedSuccessful"),
    ]


def test_a_copy_that_differs_from_the_registered_checksum_is_retrieved_again(pipeline, archived):
    pid = archived
    retrieve_datasets_flow(job_id=pipeline.new_job("retrieve", [pid]))
    [key, *_] = pipeline.retrieval_keys(pid)
    bucket = pipeline.settings.s3.retrieval_bucket
    head = pipeline.s3.head_object(Bucket=bucket, Key=key)
    size = head["ContentLength"]
    pipeline.s3.put_object(Bucket=bucket, Key=key, Body=b"\0" * size, Metadata={"chk-alg": "sha256", "chk": "0" * 64})

    job_id = pipeline.new_job("retrieve", [pid])
    state, _, tars = recording.retrieve_recording_reads(pipeline, job_id)

    assert state.is_completed()
    assert tars == {str(pipeline.lts_root / key)}  # the datablock of the damaged copy, and only it
    assert pipeline.s3.head_object(Bucket=bucket, Key=key)["Metadata"] == head["Metadata"]
    assert downloads_ok(pipeline, job_id)


def test_two_retrievals_at_once_do_the_work_once_and_both_get_links(pipeline, archived):
    pid = archived
    jobs = [pipeline.new_job("retrieve", [pid]) for _ in range(2)]
    start = pipeline.scicat_dev.state()["nextSeq"] - 1
    recording._opened = []
    try:
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run, args=(retrieve_datasets_flow,), kwargs={"job_id": job_id}
            )
            for job_id in jobs
        ]  # with this test's Prefect settings
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        tar_opens = [p for p in recording._opened if p.endswith(naming.TAR_SUFFIX)]
    finally:
        recording._opened = None

    scicat_calls = retrieval_calls(pipeline, start)
    datablocks = pipeline.scicat.get_datablocks(pid)
    # Each job probes each tar once while the LTS brings it back (before the retrieval lock: an HSM recalls it
    # then); the one that uploads opens it twice more (storage.lts.wait_until_readable's probe, then the read):
    # 4 in all, 6 had both read it.
    assert Counter(tar_opens) == {
        str(lts_layout.datablock_path(pipeline.lts_root, d.archive_id)): 4 for d in datablocks
    }
    assert all(downloads_ok(pipeline, job_id) for job_id in jobs)
    requests = [e for e in pipeline.scicat_dev.requests() if e["seq"] > start]
    for job_id in jobs:
        statuses = [
            e["body"]["jobStatusMessage"] for e in requests if e.get("jobId") == job_id and e["method"] == "PATCH"
        ]
        assert statuses == ["inProgress", "finishedSuccessful"]
    lifecycle_patches = [c for c in scicat_calls if c[:2] == ("PATCH", "dataset")]
    assert sorted(c[2] for c in lifecycle_patches) == ["datasetRetrieved"] * 2 + ["started"] * 2


def test_a_retrieval_over_the_bucket_budget_fails_naming_bytes_and_setting(pipeline, archived):
    pid = archived
    pipeline.set_settings(S3_RETRIEVAL_BUDGET_GB=0.0001)  # 107374 bytes; the dataset needs about 1 MB
    job_id = pipeline.new_job("retrieve", [pid])

    state = retrieve_datasets_flow(job_id=job_id, return_state=True)

    assert state.is_failed()
    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"  # try later: no system fault
    message = job["jobResultObject"]["message"]
    assert "S3_RETRIEVAL_BUDGET_GB" in message and "budget of 107374 bytes" in message
    needed = sum(d.packed_size for d in pipeline.scicat.get_datablocks(pid))
    assert f"needs {needed} bytes" in message
    assert pipeline.retrieval_keys(pid) == []


def test_the_cleanup_deletes_expired_retrievals_and_reports_the_bytes_freed(pipeline, archived):
    import json

    from archiver.flows.maintenance import clean_retrievals_flow

    kept = new_dataset(1, 0.2)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [kept]))
    retrieve_datasets_flow(job_id=pipeline.new_job("retrieve", [archived, kept]))
    bucket = pipeline.settings.s3.retrieval_bucket
    expired = pipeline.retrieval_keys(archived)
    for key in expired:  # as if its retention had passed
        pipeline.s3.put_object_tagging(
            Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": "retain-until", "Value": "2020-01-01T00:00:00Z"}]}
        )
    sizes = sum(pipeline.s3.head_object(Bucket=bucket, Key=key)["ContentLength"] for key in expired)
    start = pipeline.scicat_dev.state()["nextSeq"] - 1

    state = clean_retrievals_flow(return_state=True)

    assert state.result() == sizes > 0
    assert pipeline.retrieval_keys(archived) == [] and pipeline.retrieval_keys(kept) != []
    [table] = [a for a in _artifacts_of(state) if a.type == "table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sorted(r["object"] for r in rows) == expired and all(r["action"] == "deleted" for r in rows)
    assert f"{sizes} bytes freed" in table.description
    assert retrieval_calls(pipeline, start) == []  # the cleanup asks SciCat nothing


def _interrupt_retrieval(pipeline, pid: str, job_id: str) -> None:
    """Clean up after a retrieval job of `pid` that died mid-upload, as recover_job does."""
    from archiver.clients.connections import connect
    from archiver.config.runtime import load_run_configuration
    from archiver.flows.jobs import finish_interrupted_job
    from archiver.flows.recovery import remove_storage_leftovers
    from archiver.flows.retrieve import RETRIEVAL_HOOKS

    config, log = load_run_configuration(), logging.getLogger("test")
    with connect(config) as connections:
        remove_storage_leftovers(RETRIEVAL_HOOKS, [pid], config, connections, log)
        finish_interrupted_job(RETRIEVAL_HOOKS, job_id, [pid], "retrieval run killed", config, connections, log)


def test_an_interrupted_retrieval_removes_what_it_left_and_keeps_the_copy_earlier_links_point_to(pipeline, archived):
    from archiver.packing.retained import retrieval_lock
    from archiver.scicat.models import RetrieveStatus
    from archiver.storage.posix_store import PosixLtsStore

    pid = archived
    first = pipeline.new_job("retrieve", [pid])
    retrieve_datasets_flow(job_id=first)
    handed_out = objects(pipeline, pid)
    bucket, s3 = pipeline.settings.s3.retrieval_bucket, pipeline.s3
    # A second job of the dataset started, uploaded a file of its own and had another upload under way when it died.
    second = pipeline.new_job("retrieve", [pid])
    pipeline.scicat.update_lifecycle(pid, "test: retrieval started", retrieve_status_message=RetrieveStatus.STARTED)
    own = naming.retrieved_file_key(pid, "raw/own.bin")
    s3.put_object(Bucket=bucket, Key=own, Body=b"uploaded by the dead run")
    s3.create_multipart_upload(Bucket=bucket, Key=naming.retrieved_file_key(pid, "raw/unfinished.bin"))

    # a live retrieval of the dataset: its objects are its own
    with retrieval_lock(PosixLtsStore(pipeline.lts_root), pid, wait_s=0):
        _interrupt_retrieval(pipeline, pid, second)
    assert own in pipeline.retrieval_keys(pid)
    assert len(s3.list_multipart_uploads(Bucket=bucket, Prefix=naming.retrieval_prefix(pid)).get("Uploads", [])) == 1

    third = pipeline.new_job("retrieve", [pid])  # and a third job's run died later, with nobody retrieving
    pipeline.scicat.update_lifecycle(pid, "test: retrieval started", retrieve_status_message=RetrieveStatus.STARTED)
    _interrupt_retrieval(pipeline, pid, third)

    assert objects(pipeline, pid) == handed_out  # untouched, retention included
    assert downloads_ok(pipeline, first)
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=naming.retrieval_prefix(pid)).get("Uploads", []) == []
    assert [job_of(pipeline, j)["jobStatusMessage"] for j in (second, third)] == ["finishedUnsuccessful"] * 2
    lifecycle = pipeline.scicat_dev.state()["datasets"][pid]["datasetlifecycle"]
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
