"""Archival and retrieval flows run for real: Prefect server on PostgreSQL, S3 server over HTTP, the SciCat
development server, an LTS folder. Each test checks SciCat's recorded calls, the LTS and the buckets."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tomllib
from datetime import UTC

import httpx
import pytest
import tomli_w

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing import naming
from tests import lts_layout

pytestmark = pytest.mark.integration


def new_dataset(num_files: int = 4, file_size_mb: float = 0.4) -> str:
    return create_test_dataset_flow(num_files=num_files, file_size_mb=file_size_mb)


def calls(pipeline, since_seq: int = 0) -> list[tuple]:
    """SciCat calls as (method, what, id, status) in the order received, logins left out."""
    seen = []
    for entry in pipeline.scicat_dev.requests():
        if entry["seq"] <= since_seq or entry["path"].endswith("auth/login"):
            continue
        body = entry.get("body") or {}
        lifecycle = body.get("datasetlifecycle", {}) if isinstance(body, dict) else {}
        status = (
            lifecycle.get("archiveStatusMessage")
            or lifecycle.get("retrieveStatusMessage")
            or (body.get("jobStatusMessage") if isinstance(body, dict) else None)
        )
        what = entry["path"].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        what = what if what in ("origdatablocks", "datablocks") else ("job" if "jobId" in entry else "dataset")
        if entry["method"] == "DELETE":
            what = "datablock"
        seen.append((entry["method"], what, entry.get("pid") or entry.get("jobId"), status))
    return seen


def job_of(pipeline, job_id: str) -> dict:
    return pipeline.job(job_id, "v3")


def lifecycle_of(pipeline, pid: str) -> dict:
    return pipeline.scicat.get_dataset(pid).datasetlifecycle.to_wire()


def expected_checksums(pipeline, pid: str) -> dict[str, str]:
    blocks = pipeline.scicat.get_origdatablocks(pid)
    return {f.path: f.chk for b in blocks for f in b.data_file_list}


def assert_datablocks_stored(pipeline, lts_backend, archive_ids: list[str]) -> None:
    """Each datablock and its manifest on the LTS: files in the folder, or objects (the tar in DEEP_ARCHIVE)."""
    if lts_backend is None:
        for archive_id in archive_ids:
            tar_path = lts_layout.datablock_path(pipeline.lts_root, archive_id)
            assert tar_path.is_file() and lts_layout.manifest_path(tar_path).is_file()
        assert not list(pipeline.lts_root.rglob("*.partial"))
        return
    _, bucket = lts_backend
    for archive_id in archive_ids:
        assert pipeline.s3.head_object(Bucket=bucket, Key=archive_id)["StorageClass"] == "DEEP_ARCHIVE"
        assert pipeline.s3.head_object(Bucket=bucket, Key=naming.manifest_id(archive_id))["ContentLength"] > 0
    assert pipeline.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not [path for path in pipeline.lts_root.rglob("*") if path.is_file()]  # nothing in the folder


def test_archive_then_retrieve_several_datasets(pipeline, lts_backend):
    pids = [new_dataset(4, 0.4), new_dataset(3, 0.4)]
    originals = {pid: expected_checksums(pipeline, pid) for pid in pids}
    start = pipeline.scicat_dev.state()["nextSeq"] - 1
    job_id = pipeline.new_job("archive", pids)

    archive_datasets_flow(job_id=job_id)

    log = calls(pipeline, start)
    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedSuccessful"
    assert log[0][:2] == ("POST", "job")
    assert log[1] == ("PATCH", "job", job_id, "inProgress")
    assert log[-1] == ("PATCH", "job", job_id, "finishedSuccessful")
    for pid in pids:
        mine = [c for c in log if c[2] == pid]
        kinds = [(c[0], c[1], c[3]) for c in mine]
        n_blocks = sum(1 for c in kinds if c[:2] == ("POST", "datablocks"))
        assert kinds == [  # call by call: test_scicat_conformance.py
            ("GET", "datablocks", None),  # already archived? (decided from SciCat's datablocks and the LTS)
            ("GET", "origdatablocks", None),
            ("GET", "dataset", None),
            ("PATCH", "dataset", "started"),
            *[("POST", "datablocks", None)] * n_blocks,
            ("GET", "dataset", None),
            ("PATCH", "dataset", "datasetOnArchiveDisk"),
        ]
        lifecycle = lifecycle_of(pipeline, pid)
        assert (lifecycle["archivable"], lifecycle["retrievable"]) == (False, True)
        where = f"posix:{pipeline.lts_root}" if lts_backend is None else f"s3://{lts_backend[1]}"
        assert lifecycle["storageLocation"] == where  # which store holds it
        datablocks = pipeline.scicat.get_datablocks(pid)
        assert len(datablocks) == n_blocks >= 2  # 1 MB target, files of 0.3-0.4 MB
        assert_datablocks_stored(pipeline, lts_backend, [d.archive_id for d in datablocks])
        assert sorted(f.path for d in datablocks for f in d.data_file_list) == sorted(originals[pid])
        assert pipeline.landing_keys(pid) == []
    if lts_backend is not None:  # verified by the checksums S3 keeps: nothing restored
        assert lts_backend[0].tier.restore_requests == []

    retrieve_job = pipeline.new_job("retrieve", pids)
    retrieve_datasets_flow(job_id=retrieve_job)

    job = job_of(pipeline, retrieve_job)
    assert job["jobStatusMessage"] == "finishedSuccessful"
    entries = job["jobResultObject"]["result"]
    for pid in pids:
        assert lifecycle_of(pipeline, pid)["retrieveStatusMessage"] == "datasetRetrieved"
        mine = [e for e in entries if e["datasetId"] == pid]
        assert len(mine) == len(pipeline.scicat.get_datablocks(pid))
        retrieved = {}
        for entry in mine:
            assert entry["url"].startswith(pipeline.settings.s3.external_endpoint)
            content = httpx.get(entry["url"], timeout=60).raise_for_status().content
            assert len(content) == entry["size"]
            with tarfile.open(fileobj=io.BytesIO(content)) as tar:
                for member in tar.getmembers():
                    retrieved[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
        assert retrieved == originals[pid]
    if lts_backend is not None:  # retrieval restored each datablock once
        restored = [key for _, key, _ in lts_backend[0].tier.restore_requests]
        all_blocks = [d.archive_id for pid in pids for d in pipeline.scicat.get_datablocks(pid)]
        assert sorted(restored) == sorted(all_blocks)


def test_missing_landing_zone_file_is_a_user_error_and_a_rerun_finishes(pipeline):
    good, broken = new_dataset(3, 0.3), new_dataset(3, 0.3)
    [victim, *_] = pipeline.landing_keys(broken)
    saved = pipeline.s3.get_object(Bucket=pipeline.settings.s3.landingzone_bucket, Key=victim)["Body"].read()
    pipeline.s3.delete_object(Bucket=pipeline.settings.s3.landingzone_bucket, Key=victim)
    job_id = pipeline.new_job("archive", [good, broken])

    state = archive_datasets_flow(job_id=job_id, return_state=True)

    assert state.is_failed()
    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedWithDatasetErrors"
    assert lifecycle_of(pipeline, broken)["archiveStatusMessage"] == "missingFilesError"
    assert victim.rsplit("/", 1)[-1] in str(lifecycle_of(pipeline, broken)["archiveReturnMessage"])
    assert lifecycle_of(pipeline, good)["archiveStatusMessage"] == "datasetOnArchiveDisk"  # unaffected
    assert pipeline.scicat.get_datablocks(broken) == []
    assert len(pipeline.landing_keys(broken)) == 2  # left intact
    assert not any(lts_layout.datablocks_folder(pipeline.lts_root, broken).glob("*"))

    pipeline.s3.put_object(Bucket=pipeline.settings.s3.landingzone_bucket, Key=victim, Body=saved)
    rerun = pipeline.new_job("archive", [good, broken])
    archive_datasets_flow(job_id=rerun)

    assert job_of(pipeline, rerun)["jobStatusMessage"] == "finishedSuccessful"
    assert lifecycle_of(pipeline, broken)["archiveStatusMessage"] == "datasetOnArchiveDisk"
    for pid in (good, broken):
        archive_ids = [d.archive_id for d in pipeline.scicat.get_datablocks(pid)]
        assert len(archive_ids) == len(set(archive_ids)) >= 1  # no duplicates
        assert pipeline.landing_keys(pid) == []


def test_corrupt_datablock_fails_retrieval_cleanly(pipeline):
    pid = new_dataset(3, 0.3)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    [first, *_] = pipeline.scicat.get_datablocks(pid)
    tar_path = lts_layout.datablock_path(pipeline.lts_root, first.archive_id)
    with open(tar_path, "r+b") as f:
        f.seek(1024 + 100)  # inside the first member's data
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))

    job_id = pipeline.new_job("retrieve", [pid])
    state = retrieve_datasets_flow(job_id=job_id, return_state=True)

    assert state.is_failed()
    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedUnsuccessful"
    lifecycle = lifecycle_of(pipeline, pid)
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
    assert "file_0000.bin" in str(lifecycle["retrieveReturnMessage"])
    assert pipeline.retrieval_keys(pid) == []
    uploads = pipeline.s3.list_multipart_uploads(Bucket=pipeline.settings.s3.retrieval_bucket)
    assert uploads.get("Uploads", []) == []


def test_scicat_down_mid_job_then_back(pipeline):
    pid = new_dataset(2, 0.2)
    job_id = pipeline.new_job("archive", [pid])
    pipeline.scicat_dev.fail_next(6, 503)  # more than the client's own retries: the task retries take over

    archive_datasets_flow(job_id=job_id)

    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedSuccessful"
    assert lifecycle_of(pipeline, pid)["archiveStatusMessage"] == "datasetOnArchiveDisk"
    statuses = [e["status"] for e in pipeline.scicat_dev.requests()]
    assert statuses.count(503) == 6


def _artifacts_of(state, subflows: bool = False) -> list:
    """The artifacts of a flow run (and, with `subflows`, of the flow runs it started)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    run_ids = [state.state_details.flow_run_id]
    with get_client(sync_client=True) as client:
        if subflows:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=run_ids))
            )
            run_ids += [child.id for child in children]
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)))


def test_the_job_run_itself_shows_each_dataset_and_what_was_retrieved_but_no_download_link(pipeline):
    import json
    from datetime import datetime, timedelta

    from archiver.flows.artifact_keys import artifact_key

    pids = [new_dataset(2, 0.2), new_dataset(1, 0.2)]
    archive_job = pipeline.new_job("archive", pids)
    archived = archive_datasets_flow(job_id=archive_job, return_state=True)
    [table] = [a for a in _artifacts_of(archived) if a.type == "table"]
    assert table.key == artifact_key("job", archive_job)  # keyed: listed on the UI's Artifacts page
    datablock_tables = [a for a in _artifacts_of(archived, subflows=True) if a.type == "table" and a.id != table.id]
    assert {a.key for a in datablock_tables} == {artifact_key("datablocks", pid) for pid in pids}
    rows = {row["dataset"]: row for row in (json.loads(table.data) if isinstance(table.data, str) else table.data)}
    assert set(rows) == set(pids)
    for pid in pids:
        blocks = pipeline.scicat.get_datablocks(pid)
        assert rows[pid]["outcome"] == "done" and rows[pid]["datablocks"] == len(blocks)
        assert rows[pid]["bytes"] == sum(b.packed_size for b in blocks) > 0

    job_id = pipeline.new_job("retrieve", pids)
    signed = datetime.now(UTC)
    retrieved = retrieve_datasets_flow(job_id=job_id, return_state=True)

    entries = job_of(pipeline, job_id)["jobResultObject"]["result"]
    assert len(entries) == sum(len(pipeline.scicat.get_datablocks(pid)) for pid in pids)
    artifacts = _artifacts_of(retrieved, subflows=True)
    assert len({a.flow_run_id for a in artifacts}) == 1 + len(pids)  # the job run's and each dataset's
    for artifact in artifacts:  # bearer links stay with SciCat and the authenticated API, off the Prefect UI
        text = json.dumps(artifact.data) if not isinstance(artifact.data, str) else artifact.data
        text += json.dumps(artifact.description or "")
        assert "X-Amz-Signature" not in text and "X-Amz-Credential" not in text, artifact.key or artifact.type
        assert not any(entry["url"] in text or entry["url"].split("?")[0] in text for entry in entries)
    [listing] = [a for a in _artifacts_of(retrieved) if a.type == "markdown"]
    for entry in entries:  # what was retrieved: name, size, checksum
        assert entry["name"] in listing.data and str(entry["size"]) in listing.data and entry["chk"] in listing.data
    assert f"/jobs/{job_id}/links" in listing.data and "archiver job" in listing.data  # where the links are
    expiry = (signed + timedelta(seconds=pipeline.settings.s3.url_expiration_s)).strftime("%Y-%m-%d %H:%M")
    later = (signed + timedelta(seconds=pipeline.settings.s3.url_expiration_s + 60)).strftime("%Y-%m-%d %H:%M")
    assert expiry in listing.data or later in listing.data


def test_retrieval_aborts_the_unfinished_upload_of_a_killed_retrieval(pipeline):
    pid = new_dataset(2, 0.2)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    [datablock] = pipeline.scicat.get_datablocks(pid)
    bucket = pipeline.settings.s3.retrieval_bucket
    key = naming.retrieval_key(datablock.archive_id)
    upload_id = pipeline.s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]  # as a killed run left it
    pipeline.s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 5 * 1024 * 1024)

    job_id = pipeline.new_job("retrieve", [pid])
    retrieve_datasets_flow(job_id=job_id)

    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedSuccessful"
    assert pipeline.retrieval_keys(pid) == [key]
    assert pipeline.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_job_summary_names_the_failing_service(pipeline):
    data = tomllib.loads(pipeline.vars_file.read_text())
    data["scicat"].update(SCICAT_JOB_STATUS_SCHEMA="v4", SCICAT_JOBS_API_PREFIX="/api/v4/")  # v4 carries the message
    pipeline.vars_file.write_text(tomli_w.dumps(data))
    pipeline.reseed()
    pid = new_dataset(2, 0.2)
    pipeline.lts_root.rmdir()
    pipeline.lts_root.write_text("the LTS is not mounted here")  # every LTS write fails with an OSError
    job_id = pipeline.new_job("archive", [pid])

    state = archive_datasets_flow(job_id=job_id, return_state=True)

    assert state.is_failed()
    job = pipeline.job(job_id, "v4")
    assert job["statusCode"] == "finishedUnsuccessful"
    assert job["statusMessage"].startswith(f"1 of 1 dataset(s) failed: {pid}: LTS error (NotADirectoryError: ")
    assert str(lifecycle_of(pipeline, pid)["archiveReturnMessage"]).startswith("LTS error (NotADirectoryError: ")
    assert len(pipeline.landing_keys(pid)) == 2
