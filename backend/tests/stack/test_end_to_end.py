"""End to end through the running stack, the way SciCat and an operator use it (issue 8).

Datasets are uploaded to the landing zone from this machine and registered in the
SciCat development server, as an ingestor does; jobs are created in SciCat, which
forwards them to the archiver API inside the stack network. Everything is then
checked from the outside: SciCat's state, Prefect's run history, the LTS volume
(read by a throwaway container) and the S3 buckets at their published address.
The tests run in file order and build on each other (archive, then retrieve...).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from uuid import UUID

import pytest

from archiver.timeline import format_phases, job_phases

FILE_SIZE = 700 * 1024  # with the `operator` fixture's 1 MB datablocks: one datablock per file
FILES_PER_DATASET = 3
pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


SHARED: dict[str, str] = {}  # what later tests build on: the archived dataset


def _assert_ran_in_a_worker_container(stack, run: dict, pool: str) -> None:
    container = stack.flow_run_container(run)
    assert run["work_pool_name"] == pool
    assert container["Config"]["Image"] == stack.env["ARCHIVER_IMAGE"]
    assert container["Config"]["Labels"]["io.prefect.flow-run-id"] == run["id"]
    services = {entry["ID"] for entry in stack.services().values()}
    assert not any(container["Id"].startswith(service) for service in services), "ran in a compose service container"
    assert container["Mounts"][0]["Name"] == stack.env["LTS_VOLUME_NAME"]
    assert container["Mounts"][0]["Destination"] == stack.lts_root


def test_archive_job_from_scicat_runs_in_an_archival_worker_container(stack, operator):
    pid = operator.ingest_dataset(FILES_PER_DATASET, FILE_SIZE)
    start = time.monotonic()
    job, started = operator.create_job("archive", [pid])
    run = operator.wait(started)
    stack.record_timing(
        f"archive job ({FILES_PER_DATASET} x {FILE_SIZE // 1024} KB), SciCat job to run end", time.monotonic() - start
    )
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert run["name"] == f"archive-job-{job['id']}"
    _assert_ran_in_a_worker_container(stack, run, "archival-docker-pool")
    operator.assert_archived(pid, job["id"])
    SHARED["pid"], SHARED["job"], SHARED["run"] = pid, job["id"], run["id"]

    # The same job posted from this machine through the proxy with SciCat's header: the run already started.
    runs = operator.flow_run_count()
    again = operator.post_job_through_proxy(job, stack.secret("archiverapiauth.txt"))
    assert again.status_code == 200, again.text
    assert again.json()["uuid"] == str(started["uuid"])
    assert operator.flow_run_count() == runs


def test_a_1_mib_archive_job_prints_where_its_seconds_go(stack, operator):
    """Job overhead on the stack (issue 16, item 3): the phases of small archive jobs, read from Prefect's history.
    The first is still the first flow-run container of this pool's image on this host, so three are run."""
    for attempt in range(1, 4):
        pid = operator.ingest_dataset(1, 1024 * 1024)
        created = datetime.now(UTC)
        job, started = operator.create_job("archive", [pid])
        run = operator.wait(started)
        assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
        operator.assert_archived(pid, job["id"])
        with stack.prefect_client_settings():
            phases = job_phases(UUID(run["id"]), created)
        for line in format_phases(f"stack: archive job {attempt} of a 1 MiB dataset ({run['state_name']})", phases):
            stack.note(line)


def test_retrieve_job_gives_one_url_per_datablock_with_the_original_bytes(stack, operator):
    pid = SHARED.get("pid") or pytest.skip("needs the archived dataset of the archive test")
    start = time.monotonic()
    job, started = operator.create_job("retrieve", [pid])
    run = operator.wait(started)
    stack.record_timing(
        f"retrieve job ({FILES_PER_DATASET} datablocks), SciCat job to run end", time.monotonic() - start
    )
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    _assert_ran_in_a_worker_container(stack, run, "retrieval-docker-pool")

    operator.assert_retrieved(pid, job["id"])


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


def _tagged_task_runs(stack, tag: str, parent_run_ids: list[str], expected: int) -> list[dict]:
    """Completed task runs with the tag in the children of the runs (Prefect records them from events: wait)."""
    deadline = time.monotonic() + 60
    while True:
        found = stack.prefect(
            "POST",
            "/task_runs/filter",
            json={
                "task_runs": {"tags": {"all_": [tag]}, "state": {"type": {"any_": ["COMPLETED"]}}},
                "flow_runs": {"parent_flow_run_id": {"any_": parent_run_ids}},
            },
        ).json()
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(2)


WORKERS, JOBS = 3, 6


def _deploy_flows(stack, env: dict[str, str]) -> None:
    """Deploy prefect.yaml again, as an operator does after changing a deployment setting in .env."""
    stack.compose("run", "--rm", "--no-deps", "prefect-flows-deployment", env=env)


def _archival_jobs_limit(stack) -> int:
    deployment = stack.prefect("GET", "/deployments/name/archive_datasetlist/datasets_archival").json()
    return deployment["global_concurrency_limit"]["limit"]


@pytest.mark.timeout(1800)
def test_six_archive_jobs_over_three_workers_hold_the_lts_limits_across_all(stack, operator):
    # Each worker runs at most 2 flow runs at once and the deployment allows all 6 jobs at once (as an operator
    # who adds workers sets it, docs/deployment.md), so running them together takes all three workers.
    scaled = {"ARCHIVAL_WORKER_FLOW_RUN_LIMIT": "2", "ARCHIVAL_JOBS_LIMIT": str(JOBS)}
    _deploy_flows(stack, scaled)
    stack.compose(
        "up", "-d", "--wait", "--scale", f"prefect-archival-worker={WORKERS}", "prefect-archival-worker", env=scaled
    )
    try:
        assert _archival_jobs_limit(stack) == JOBS
        pids = [operator.ingest_dataset(FILES_PER_DATASET, FILE_SIZE) for _ in range(JOBS)]
        started = [operator.create_job("archive", [pid]) for pid in pids]
        runs = [operator.wait(run, timeout_s=600) for _, run in started]
    finally:
        stack.compose("up", "-d", "--wait", "--scale", "prefect-archival-worker=1", "prefect-archival-worker")
        _deploy_flows(stack, {})
    for run in runs:
        assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    for pid, (job, _) in zip(pids, started, strict=True):
        operator.assert_archived(pid, job["id"])

    by_worker = Counter(run["labels"].get("prefect.worker.name") for run in runs)
    stack.note(
        f"{JOBS} archive jobs over {WORKERS} archival workers (at most 2 runs each): runs per worker "
        f"{sorted(by_worker.values(), reverse=True)}"
    )
    assert None not in by_worker and len(by_worker) >= 2, by_worker
    run_ids = [run["id"] for run in runs]
    for tag, limit_name in (
        ("move-datablocks-to-lts", "MOVE_TO_LTS_LIMIT"),
        ("verify-datablocks-in-lts", "VERIFY_LTS_LIMIT"),
    ):
        limit = stack.prefect("GET", f"/concurrency_limits/tag/{tag}").json()["concurrency_limit"]
        # A dataset's datablocks are written and verified in slices (flows/lts_slices.py): one or more each.
        done = _tagged_task_runs(stack, tag, run_ids, JOBS)
        assert {pid for pid in pids if any(pid in t["name"] for t in done)} == set(pids), [t["name"] for t in done]
        intervals = [(_iso(t["start_time"]), _iso(t["end_time"])) for t in done]
        peak = _max_overlap(intervals)
        stack.note(
            f"{JOBS} archive jobs over {WORKERS} workers: {len(done)} {tag} task runs, at most {peak} at once "
            f"({limit_name} {limit})"
        )
        assert peak <= limit, sorted(intervals)
    # The LTS limits were what kept them apart: more job runs ran at once than one worker may start.
    spans = [(_iso(r["start_time"]), _iso(r["end_time"])) for r in runs]
    stack.note(f"{JOBS} archive jobs over {WORKERS} workers: at most {_max_overlap(spans)} job runs at once")
    assert _max_overlap(spans) >= 3, spans
    assert _archival_jobs_limit(stack) == 2, "the deployment's limit of .env was not restored"
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
    pid = operator.ingest_dataset(FILES_PER_DATASET, FILE_SIZE)
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
    operator.assert_archived(pid, job["id"])

    # SciCat (or a user) submits the job again: the API answers with the same run, nothing runs twice.
    again = operator.post_job_through_proxy(job, stack.secret("archiverapiauth.txt"))
    assert again.status_code == 200 and again.json()["uuid"] == str(started["uuid"]), again.text
    # A new archive job for the same dataset runs on the restarted worker and adds no datablock.
    second_job, second = operator.create_job("archive", [pid])
    rerun = operator.wait(second)
    assert rerun["state_type"] == "COMPLETED", stack.flow_run_failure(rerun)
    operator.assert_archived(pid, second_job["id"])


def test_prefect_server_restart_between_jobs_keeps_state_and_slots(stack, operator):
    before = stack.prefect("GET", f"/flow_runs/{SHARED['run']}").json() if "run" in SHARED else None
    stack.compose("restart", "prefect-server")
    stack.compose("up", "-d", "--wait")
    if before:
        after = stack.prefect("GET", f"/flow_runs/{SHARED['run']}").json()
        assert (after["state_type"], after["name"]) == (before["state_type"], before["name"])

    pid = operator.ingest_dataset(FILES_PER_DATASET, FILE_SIZE)
    job, started = operator.create_job("archive", [pid])
    run = operator.wait(started)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    operator.assert_archived(pid, job["id"])
    for tag in ("move-datablocks-to-lts", "verify-datablocks-in-lts", "wait-for-free-space"):
        assert stack.prefect("GET", f"/concurrency_limits/tag/{tag}").json()["active_slots"] == [], tag
