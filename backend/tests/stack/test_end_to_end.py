"""End to end through the running stack, the way SciCat and an operator use it (issue 8).

Datasets are uploaded to the landing zone from this machine and registered in the
SciCat development server, as an ingestor does; jobs are created in SciCat, which
forwards them to the archiver API inside the stack network. Everything is then
checked from the outside: SciCat's state, Prefect's run history, the LTS volume
(read by a throwaway container) and the S3 buckets at their published address.
The tests run in file order and build on each other (archive, then retrieve...).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from archiver.config.settings import ScicatSection, load_vars_file
from archiver.packing.naming import landing_prefix, retrieval_prefix, safe_name
from archiver.scicat.client import ScicatClient, ScicatCredentials
from archiver.scicat.models import DataFile, NewOrigDatablock, new_raw_dataset

REPO = Path(__file__).resolve().parents[3]
VARS = load_vars_file(REPO / "prefect-vars.toml")
LTS_ROOT = str(VARS.lts.storage_root)
FILE_SIZE = 700 * 1024  # with ARCHIVER_TARGET_SIZE_MB=1 below: one datablock per file
FILES_PER_DATASET = 3
pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


class Operator:
    """What SciCat, an ingestor and an operator do to the stack, from this machine."""

    def __init__(self, stack, s3):
        self.stack = stack
        self.s3 = s3
        credentials = ScicatCredentials(stack.secret("scicatuser.txt"), stack.secret("scicatpass.txt"))
        self.scicat = ScicatClient(ScicatSection(SCICAT_ENDPOINT=stack.scicat_url), credentials)
        self.originals: dict[str, dict[str, bytes]] = {}  # pid -> path -> content

    # --- ingestor ---

    def ingest_dataset(self, files: int = FILES_PER_DATASET, size: int = FILE_SIZE) -> str:
        """Random files uploaded below the landing-zone prefix, then dataset + origdatablock in SciCat."""
        dataset = self.scicat.create_dataset(new_raw_dataset("e2e", "end-to-end dataset", size=files * size,
                                                             number_of_files=files))
        pid = dataset.pid
        contents = {f"raw/file_{i}.bin": os.urandom(size) for i in range(files)}
        datafiles = []
        for path, data in contents.items():
            self.s3.put_object(Bucket=VARS.minio.landingzone_bucket, Key=landing_prefix(pid) + path, Body=data)
            datafiles.append(DataFile(path=path, size=len(data), time=datetime.now(timezone.utc),
                                      chk=hashlib.sha256(data).hexdigest(), uid="0", gid="0", perm="644"))
        self.scicat.create_origdatablock(pid, NewOrigDatablock(size=files * size, chk_alg="sha256",
                                                               data_file_list=datafiles))
        self.originals[pid] = contents
        return pid

    # --- SciCat ---

    def create_job(self, job_type: str, pids: list[str]) -> tuple[dict, dict]:
        """A job created in SciCat; returns the job document and the flow run its forward to the API started."""
        since = self.stack.scicat_requests()[-1]["seq"] if self.stack.scicat_requests() else 0
        job = self.scicat.create_job(job_type, pids)
        entry = next(e for e in self.stack.scicat_requests(since)
                     if e["method"] == "POST" and e.get("jobId") == job.id and e["path"].endswith("/jobs"))
        forward = entry["forward"]
        assert forward.get("status") == 200, f"SciCat's call of the archiver API failed: {forward}"
        assert forward["url"] == "http://archiver-api:8000/api/v1/jobs"
        started = json.loads(forward["answer"])
        return job.to_wire(), started

    def job(self, job_id: str) -> dict:
        return self.stack.scicat_state()["jobs"][job_id]

    def dataset(self, pid: str) -> dict:
        return self.stack.scicat_state()["datasets"][pid]

    def datablocks(self, pid: str) -> list[dict]:
        return [b for b in self.stack.scicat_state()["datablocks"].values() if b["datasetId"] == pid]

    # --- the archiver API through the proxy, from this machine ---

    def post_job_through_proxy(self, job: dict, authorization: str | None) -> httpx.Response:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return httpx.post(f"{self.stack.base_url}/api/v1/jobs", json=job, headers=headers, timeout=60)

    # --- the LTS volume, read by a throwaway container ---

    def lts(self, *command: str) -> str:
        return subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "-v", f"{self.stack.env['LTS_VOLUME_NAME']}:/lts",
             "--entrypoint", command[0], self.stack.env["ARCHIVER_IMAGE"], *command[1:]],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout

    def lts_files(self, pid: str) -> list[str]:
        folder = f"/lts/openem-network/datasets/{safe_name(pid)}"
        listing = self.lts("sh", "-c", f"test -d '{folder}' && cd '{folder}' && find . -type f | sort || true")
        return [line.removeprefix("./") for line in listing.split()]

    def landing_zone(self, pid: str) -> list[str]:
        return self._keys(VARS.minio.landingzone_bucket, landing_prefix(pid))

    def retrieval_bucket(self, pid: str) -> list[str]:
        return self._keys(VARS.minio.retrieval_bucket, retrieval_prefix(pid))

    def _keys(self, bucket: str, prefix: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

    # --- Prefect ---

    def wait(self, started: dict, timeout_s: float = 420) -> dict:
        return self.stack.wait_for_flow_run(str(started["uuid"]), timeout_s=timeout_s)

    def flow_run_count(self) -> int:
        return self.stack.prefect("POST", "/flow_runs/count", json={}).json()


@pytest.fixture(scope="module")
def operator(stack, stack_s3):
    """The Operator, with datablocks of at most 1 MB for the module (several datablocks per dataset)."""
    stack.prefect("PATCH", "/variables/name/archiver_target_size_mb", json={"value": 1})
    operator = Operator(stack, stack_s3)
    yield operator
    operator.scicat.close()
    stack.prefect("PATCH", "/variables/name/archiver_target_size_mb", json={"value": VARS.archiver.target_size_mb})


SHARED: dict[str, str] = {}  # what later tests build on: the archived dataset


def _assert_ran_in_a_worker_container(stack, run: dict, pool: str) -> None:
    container = stack.flow_run_container(run)
    assert run["work_pool_name"] == pool
    assert container["Config"]["Image"] == stack.env["ARCHIVER_IMAGE"]
    assert container["Config"]["Labels"]["io.prefect.flow-run-id"] == run["id"]
    services = {entry["ID"] for entry in stack.services().values()}
    assert not any(container["Id"].startswith(service) for service in services), "ran in a compose service container"
    assert container["Mounts"][0]["Name"] == stack.env["LTS_VOLUME_NAME"]
    assert container["Mounts"][0]["Destination"] == LTS_ROOT


def _assert_archived(operator: Operator, pid: str, job_id: str) -> None:
    assert operator.job(job_id)["jobStatusMessage"] == "finishedSuccessful"
    lifecycle = operator.dataset(pid)["datasetlifecycle"]
    assert lifecycle["archiveStatusMessage"] == "datasetOnArchiveDisk"
    assert (lifecycle["archivable"], lifecycle["retrievable"]) == (False, True)
    blocks = operator.datablocks(pid)
    assert len(blocks) == FILES_PER_DATASET, blocks
    assert sorted(f["path"] for b in blocks for f in b["dataFileList"]) == sorted(operator.originals[pid])
    stem = safe_name(pid)
    expected = sorted([f"datablocks/{stem}_{i:05d}{suffix}" for i in range(FILES_PER_DATASET)
                       for suffix in (".tar", ".manifest.json")])
    assert operator.lts_files(pid) == expected
    assert {b["archiveId"].rsplit("/", 1)[-1] for b in blocks} == {f"{stem}_{i:05d}.tar" for i in range(FILES_PER_DATASET)}
    assert operator.landing_zone(pid) == []


def test_archive_job_from_scicat_runs_in_an_archival_worker_container(stack, operator):
    pid = operator.ingest_dataset()
    start = time.monotonic()
    job, started = operator.create_job("archive", [pid])
    run = operator.wait(started)
    stack.record_timing(f"archive job ({FILES_PER_DATASET} x {FILE_SIZE // 1024} KB), SciCat job to run end",
                        time.monotonic() - start)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert run["name"] == f"archive-job-{job['id']}"
    _assert_ran_in_a_worker_container(stack, run, "archival-docker-pool")
    _assert_archived(operator, pid, job["id"])
    SHARED["pid"], SHARED["job"], SHARED["run"] = pid, job["id"], run["id"]

    # The same job posted from this machine through the proxy with SciCat's header: the run already started.
    runs = operator.flow_run_count()
    again = operator.post_job_through_proxy(job, stack.secret("archiverapiauth.txt"))
    assert again.status_code == 200, again.text
    assert again.json()["uuid"] == str(started["uuid"])
    assert operator.flow_run_count() == runs


def test_retrieve_job_gives_one_url_per_datablock_with_the_original_bytes(stack, operator):
    pid = SHARED.get("pid") or pytest.skip("needs the archived dataset of the archive test")
    start = time.monotonic()
    job, started = operator.create_job("retrieve", [pid])
    run = operator.wait(started)
    stack.record_timing(f"retrieve job ({FILES_PER_DATASET} datablocks), SciCat job to run end", time.monotonic() - start)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    _assert_ran_in_a_worker_container(stack, run, "retrieval-docker-pool")

    done = operator.job(job["id"])
    assert done["jobStatusMessage"] == "finishedSuccessful"
    assert operator.dataset(pid)["datasetlifecycle"]["retrieveStatusMessage"] == "datasetRetrieved"
    entries = done["jobResultObject"]["result"]
    blocks = {b["archiveId"]: b for b in operator.datablocks(pid)}
    assert sorted(e["archiveId"] for e in entries) == sorted(blocks)
    checksums = {f["path"]: f["chk"] for b in operator.stack.scicat_state()["origdatablocks"].values()
                 if b["datasetId"] == pid for f in b["dataFileList"]}
    seen: dict[str, bytes] = {}
    for entry in entries:
        assert entry["datasetId"] == pid
        assert entry["url"].startswith(stack.s3_url + "/"), entry["url"]
        download = httpx.get(entry["url"], timeout=60)  # from this machine: the published S3 port
        assert download.status_code == 200, download.text[:500]
        assert len(download.content) == entry["size"] == blocks[entry["archiveId"]]["packedSize"]
        with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    seen[member.name] = tar.extractfile(member).read()
    assert sorted(seen) == sorted(operator.originals[pid])
    for path, data in seen.items():
        assert hashlib.sha256(data).hexdigest() == checksums[path], path
        assert data == operator.originals[pid][path], path


def test_the_api_refuses_a_wrong_authorization_header_and_starts_nothing(operator):
    runs = operator.flow_run_count()
    job = {"id": str(uuid.uuid4()), "type": "archive", "jobParams": {"datasetList": [{"pid": "x/y"}]}}
    for header in ("Bearer wrong", None, operator.stack.secret("archiverapiauth.txt") + "x"):
        answer = operator.post_job_through_proxy(job, header)
        assert answer.status_code == 401, answer.text
    assert operator.flow_run_count() == runs


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    # At the same instant an end (-1) sorts before a start (+1): touching intervals do not overlap.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_concurrent_archive_jobs_never_write_more_datablocks_at_once_than_the_limit(stack, operator):
    tag = "move-datablocks-to-lts"
    limit = stack.prefect("GET", f"/concurrency_limits/tag/{tag}").json()["concurrency_limit"]
    pids = [operator.ingest_dataset() for _ in range(3)]
    started = [operator.create_job("archive", [pid]) for pid in pids]
    runs = [operator.wait(run, timeout_s=600) for _, run in started]
    for run in runs:
        assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    for pid, (job, _) in zip(pids, started):
        _assert_archived(operator, pid, job["id"])

    run_ids = [run["id"] for run in runs]
    # The dataset subflows' task runs carry the tag; their flow runs are children of the job runs.
    deadline = time.monotonic() + 60
    while True:
        writes = stack.prefect("POST", "/task_runs/filter", json={
            "task_runs": {"tags": {"all_": [tag]}, "state": {"type": {"any_": ["COMPLETED"]}}},
            "flow_runs": {"parent_flow_run_id": {"any_": run_ids}},
        }).json()
        if len(writes) >= 3 * FILES_PER_DATASET or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(writes) == 3 * FILES_PER_DATASET, [w["name"] for w in writes]
    intervals = [(_iso(w["start_time"]), _iso(w["end_time"])) for w in writes]
    peak = _max_overlap(intervals)
    stack.note(f"concurrency: {len(writes)} LTS writes of 3 simultaneous archive jobs, at most {peak} at once "
               f"(MOVE_TO_LTS_LIMIT {limit})")
    assert peak <= limit, sorted(intervals)
    # The limit was what kept them apart: the job runs themselves overlapped in time.
    spans = [(_iso(r["start_time"]), _iso(r["end_time"])) for r in runs]
    assert _max_overlap(spans) >= 2, spans
    SHARED["spare_pid"] = pids[0]


def test_a_corrupted_datablock_fails_retrieval_cleanly(stack, operator):
    pid = SHARED.get("spare_pid") or pytest.skip("needs a dataset archived by the concurrency test")
    block = sorted(operator.datablocks(pid), key=lambda b: b["archiveId"])[1]
    # Flip bytes in the middle of the file's data (past the tar headers), size unchanged.
    path = f"/lts/{block['archiveId']}"
    operator.lts("sh", "-c", f"printf 'CORRUPTED' | dd of='{path}' bs=1 seek=200000 conv=notrunc status=none")

    job, started = operator.create_job("retrieve", [pid])
    run = operator.wait(started)
    assert run["state_type"] == "FAILED", stack.flow_run_failure(run)
    assert operator.job(job["id"])["jobStatusMessage"] == "finishedUnsuccessful"
    lifecycle = operator.dataset(pid)["datasetlifecycle"]
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
    assert operator.retrieval_bucket(pid) == []
    # Nothing lost: the other datablocks and the SciCat records are untouched.
    assert len(operator.datablocks(pid)) == FILES_PER_DATASET
    assert len([f for f in operator.lts_files(pid) if f.endswith(".tar")]) == FILES_PER_DATASET


def test_archival_worker_stopped_mid_job_then_started_job_resubmitted_without_duplicates(stack, operator):
    pid = operator.ingest_dataset()
    job, started = operator.create_job("archive", [pid])
    deadline = time.monotonic() + 180
    while stack.prefect("GET", f"/flow_runs/{started['uuid']}").json()["state_type"] not in ("RUNNING", "COMPLETED"):
        assert time.monotonic() < deadline, "the archive run never started"
        time.sleep(1)
    stack.compose("stop", "--timeout", "0", "prefect-archival-worker")  # at once, as a crash of its host would
    state_at_stop = stack.prefect("GET", f"/flow_runs/{started['uuid']}").json()["state_type"]
    try:
        # The run's container is not the worker's: it carries on and finishes.
        run = operator.wait(started)
        assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    finally:
        stack.compose("up", "-d", "--wait", "prefect-archival-worker")
    assert state_at_stop == "RUNNING", f"the run was {state_at_stop} when its worker stopped: not mid-job"
    _assert_archived(operator, pid, job["id"])

    # SciCat (or a user) submits the job again: the API answers with the same run, nothing runs twice.
    again = operator.post_job_through_proxy(job, stack.secret("archiverapiauth.txt"))
    assert again.status_code == 200 and again.json()["uuid"] == str(started["uuid"]), again.text
    # A new archive job for the same dataset runs on the restarted worker and adds no datablock.
    second_job, second = operator.create_job("archive", [pid])
    rerun = operator.wait(second)
    assert rerun["state_type"] == "COMPLETED", stack.flow_run_failure(rerun)
    _assert_archived(operator, pid, second_job["id"])


def test_prefect_server_restart_between_jobs_keeps_state_and_slots(stack, operator):
    before = stack.prefect("GET", f"/flow_runs/{SHARED['run']}").json() if "run" in SHARED else None
    stack.compose("restart", "prefect-server")
    stack.compose("up", "-d", "--wait")
    if before:
        after = stack.prefect("GET", f"/flow_runs/{SHARED['run']}").json()
        assert (after["state_type"], after["name"]) == (before["state_type"], before["name"])

    pid = operator.ingest_dataset()
    job, started = operator.create_job("archive", [pid])
    run = operator.wait(started)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    _assert_archived(operator, pid, job["id"])
    for tag in ("move-datablocks-to-lts", "verify-datablocks-in-lts", "wait-for-free-space"):
        assert stack.prefect("GET", f"/concurrency_limits/tag/{tag}").json()["active_slots"] == [], tag
