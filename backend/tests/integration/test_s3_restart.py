"""The S3 server killed and started again (same port, same data folder) in the middle of an archive job and of a
retrieve job: each job finishes, or fails naming S3 and a second job finishes; no byte is lost on the way.

The test runs its own SeaweedFS server so that it can kill it without disturbing the session's; the jobs run
under `archiver serve`, as flow runs do without Docker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time

import httpx
import pytest

from archiver import local_services
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.packing import naming
from archiver.packing.archive import verify_datablock
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout
from tests.conftest import S3_TEST_ACCOUNTS
from tests.integration.restartable import Restartable
from tests.integration.served import start_served
from tests.integration.test_prefect_outage import tars

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("ARCHIVER_TEST_S3_OUTAGE_S", "5"))
NUM_FILES = 12  # a datablock per file (1 MB target)
DEPLOYMENTS = {
    "archive": "archive_datasetlist/datasets_archival",
    "retrieve": "retrieve_datasetlist/datasets_retrieval",
}


class RestartableS3(Restartable):
    """A SeaweedFS server that can be killed and started again on the same port and data folder."""

    def __init__(self, folder):
        port = local_services.free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            lambda: local_services.s3_server(
                folder / "data", folder, local_services.account_identities(S3_TEST_ACCOUNTS), port=port
            )
        )


@pytest.fixture
def own_s3(tmp_path):
    server = RestartableS3(tmp_path / "own-s3")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(own_s3) -> str:
    return own_s3.url


def outage(own_s3) -> None:
    own_s3.kill()
    time.sleep(OUTAGE_S)
    own_s3.start()


def run_job(pipeline, job_type: str, pid: str, during=None) -> dict:
    """A `job_type` job of `pid` served to its end; `during()` is called while it runs. A job that failed must
    say that S3 failed; a second job then must finish. Returns the SciCat job that finished successfully."""
    job_id = pipeline.new_job(job_type, [pid])
    start_served(DEPLOYMENTS[job_type], job_id)
    if during:
        during()
    job = local_services.poll_until(lambda: _finished(pipeline, job_id), 600, f"the {job_type} job to end", interval=1)
    if job["jobStatusMessage"] == "finishedSuccessful":
        return job
    assert "S3" in json.dumps(job), job  # the failure names the service that failed
    print(f"{job_type} job {job_id} failed after the S3 outage ({job['jobStatusMessage']}); running a second one")
    if job_type == "archive":
        assert pipeline.landing_keys(pid), "the landing zone was cleaned by a failed archival"
    return run_job(pipeline, job_type, pid)


def _finished(pipeline, job_id: str) -> dict | None:
    job = pipeline.job(job_id)
    return job if (job.get("jobStatusMessage") or "").startswith("finished") else None


def test_s3_restarted_mid_archival_and_mid_retrieval_loses_no_byte(pipeline, own_s3, serve_deployments):
    pid = create_test_dataset_flow(num_files=NUM_FILES, file_size_mb=1.0)
    originals = {f.path: f.chk for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list}
    landing = pipeline.landing_keys(pid)
    serve_deployments()
    seen = {}

    def restart_mid_archival():
        seen["archived"] = local_services.poll_until(
            lambda: tars(pipeline, pid), 240, "the first datablock", interval=0.05
        )
        outage(own_s3)
        assert pipeline.landing_keys(pid) == landing  # nothing deleted before the datablocks are registered

    run_job(pipeline, "archive", pid, during=restart_mid_archival)

    assert 0 < len(seen["archived"]) < NUM_FILES  # the outage began mid-archival
    datablocks = pipeline.scicat.get_datablocks(pid)
    archived, lts_tars = {}, {}
    for datablock in datablocks:
        manifest = verify_datablock(PosixLtsStore(pipeline.lts_root), datablock.archive_id)
        archived.update({f.path: f.chk for f in manifest.dataFileList})
        lts_tars[datablock.archive_id] = lts_layout.datablock_path(pipeline.lts_root, datablock.archive_id).read_bytes()
    assert archived == originals
    assert pipeline.landing_keys(pid) == []
    assert not list(pipeline.lts_root.rglob("*" + naming.PARTIAL_SUFFIX))

    def restart_mid_retrieval():
        seen["retrieved"] = local_services.poll_until(
            lambda: pipeline.retrieval_keys(pid), 240, "the first retrieved datablock", interval=0.05
        )
        outage(own_s3)

    job = run_job(pipeline, "retrieve", pid, during=restart_mid_retrieval)

    assert 0 < len(seen["retrieved"]) < len(datablocks)  # the outage began mid-retrieval
    unfinished = pipeline.s3.list_multipart_uploads(Bucket=pipeline.settings.s3.retrieval_bucket).get("Uploads", [])
    assert [u["Key"] for u in unfinished] == []  # tries cut short by the outage leave no parts behind
    downloads = [
        httpx.get(entry["url"], timeout=60).raise_for_status().content for entry in job["jobResultObject"]["result"]
    ]
    assert sorted(hashlib.sha256(d).hexdigest() for d in downloads) == sorted(
        hashlib.sha256(t).hexdigest() for t in lts_tars.values()
    )
    retrieved = {}
    for content in downloads:
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            for member in tar.getmembers():
                retrieved[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    assert retrieved == originals
