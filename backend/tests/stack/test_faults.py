"""Faults while bytes move (issue 12): restarts and kills in the running stack, mid-write.

Every test starts a job on a dataset of several datablocks (a few hundred MB; the `operator`
fixture's 1 MB target size gives one datablock per file), waits for a concrete sign that
bytes are moving (a `.partial` datablock beside a finished one on the LTS volume, or an
unfinished multipart upload to the retrieval bucket), then restarts or kills a part of the
stack. Afterwards the job must have a clear outcome in SciCat, nothing may be left running or
half written, and the data is compared byte for byte with what was uploaded. Recovery times
go to the stack tier's summary.

The LTS volume is a local volume in development; the tests read it where Docker keeps it on
this machine (polling through a container would be too slow to catch a write in progress).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from archiver.config.limits import load_limits_file
from archiver.packing import naming

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[3]
FILES, FILE_SIZE = 6, 64 * 1024 * 1024  # 384 MB, one datablock per file (written in about 0.5 s each here)
JOB_END_S = 600
# docs/flows.md "When a run crashes": SciCat shows the outcome of a killed run about 30 s after the kill
# when the worker sees its container die. Asserted with room for this 2-core machine.
WORKER_SEEN_BOUND_S = 90
SHARED: dict[str, str] = {}  # a dataset archived by an earlier test, for the retrieval tests


# --- the LTS volume and the retrieval bucket, watched from this machine ---

def datablocks_folder(stack, pid: str) -> Path:
    return naming.datablocks_folder(stack.lts_host_path(), pid)


def finished_datablocks(folder: Path) -> dict[str, tuple[int, int]]:
    """Datablocks under their final name, with (inode, mtime) to tell whether they were written again."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob(f"*{naming.TAR_SUFFIX}")}


def partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"*{naming.PARTIAL_SUFFIX}")) if folder.exists() else []


def poll(condition, timeout_s: float, what: str, interval: float = 1.0, give_up=None):
    """`condition()` once truthy; fails after `timeout_s` or when `give_up()` says why it never will be."""
    deadline = time.monotonic() + timeout_s
    checks = 0
    while True:
        result = condition()
        if result:
            return result
        checks += 1
        if give_up and checks % max(1, int(2 / interval)) == 0:  # about every 2 s
            reason = give_up()
            assert not reason, f"{what}: {reason}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f}s"
        time.sleep(interval)


def run_ended(stack, run_id: str):
    """For `poll(give_up=...)`: why waiting for something of a running job is pointless."""
    def reason() -> str | None:
        run = stack.prefect("GET", f"/flow_runs/{run_id}").json()
        return f"the run ended {run['state_name']} first" if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
    return reason


def wait_mid_archive_write(stack, pid: str, run_id: str) -> dict[str, tuple[int, int]]:
    """Once a datablock is finished and the next one half written: the finished ones, with inode and mtime."""
    folder = datablocks_folder(stack, pid)

    def mid_write():
        finished = finished_datablocks(folder) if folder.exists() else {}
        return finished if finished and partial_files(folder) else None

    return poll(mid_write, 300, "datablock written after a finished one", interval=0.01, give_up=run_ended(stack, run_id))


def wait_mid_upload(operator, pid: str, run_id: str) -> list[str]:
    return poll(lambda: operator.unfinished_uploads(pid), 300, "upload to the retrieval bucket in progress",
                interval=0.01, give_up=run_ended(operator.stack, run_id))


# --- Prefect: the job's runs, what is left of them, the crash retries ---

def job_runs(stack, job_kind: str, job_id: str) -> list[dict]:
    """Every run of the job (the first and any crash retry; they share the name), oldest first."""
    return stack.prefect("POST", "/flow_runs/filter", json={
        "flow_runs": {"name": {"any_": [f"{job_kind}-job-{job_id}"]}}, "sort": "EXPECTED_START_TIME_ASC",
    }).json()


def assert_nothing_left_running(stack, run_ids: list[str]) -> None:
    """No subflow or task run of the job's runs unfinished, no tag slot taken, no recovery run unfinished."""
    runs, parents = [], list(run_ids)
    while parents:
        runs += stack.prefect("POST", "/flow_runs/filter", json={"flow_runs": {"id": {"any_": parents}}}).json()
        children = stack.prefect("POST", "/flow_runs/filter",
                                 json={"flow_runs": {"parent_flow_run_id": {"any_": parents}}}).json()
        parents = [child["id"] for child in children]
    assert len(runs) > len(run_ids), "the job's dataset subflow runs are missing"
    assert [f"{r['name']} {r['state_name']}" for r in runs if r["state_type"] not in FINAL] == []
    task_runs = stack.prefect("POST", "/task_runs/filter",
                              json={"task_runs": {"flow_run_id": {"any_": [r["id"] for r in runs]}}}).json()
    assert task_runs, "the job's task runs are missing"
    assert [f"{t['name']} {t['state_name']}" for t in task_runs if t["state_type"] not in FINAL] == []
    for limit in load_limits_file(REPO / "concurrency-limits.toml").by_name().values():
        assert stack.prefect("GET", f"/concurrency_limits/tag/{limit.tag}").json()["active_slots"] == [], limit.tag

    def recoveries_unfinished() -> list[str]:
        recoveries = [r for run_id in run_ids for r in stack.prefect("POST", "/flow_runs/filter", json={
            "flow_runs": {"name": {"like_": f"recover-%{run_id}"}}}).json()]
        return [f"{r['name']} {r['state_name']}" for r in recoveries if r["state_type"] != "COMPLETED"]

    # A recovery reports the job (or starts it again) as its last step: give it a moment to end.
    with contextlib.suppress(AssertionError):
        poll(lambda: not recoveries_unfinished(), 60, "end of the recovery runs")
    assert recoveries_unfinished() == []


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@contextlib.contextmanager
def crash_retries(stack, retries: int):
    """ARCHIVER_CRASH_RETRIES (the Prefect variable the recovery reads) for the block, restored after."""
    seeded = stack.prefect("GET", "/variables/name/archiver_crash_retries").json()["value"]
    stack.set_variable("archiver_crash_retries", retries)
    try:
        yield
    finally:
        stack.set_variable("archiver_crash_retries", seeded)


def kill_flow_run_container(stack, run_id: str) -> float:
    """`docker kill` of the container the worker started for the run; returns when (monotonic)."""
    container = stack.flow_run_container(stack.prefect("GET", f"/flow_runs/{run_id}").json())
    subprocess.run(["docker", "kill", container["Id"]], capture_output=True, text=True, check=True)
    return time.monotonic()


def kill_expecting_resume(operator, kind: str, job_id: str, run_id: str) -> None:
    """Kill the job's run; the recovery must start it again (crash retry 1) and the job end successful."""
    stack = operator.stack
    killed_at = kill_flow_run_container(stack, run_id)
    poll(lambda: stack.prefect("GET", f"/flow_runs/{run_id}").json()["state_type"] == "CRASHED", 120,
         "Crashed state of the killed run")
    crashed_s = time.monotonic() - killed_at
    retry = poll(lambda: job_runs(stack, kind, job_id)[1:], 180, "crash retry of the job")[0]
    retried_s = time.monotonic() - killed_at
    assert "crash-retry:1" in retry["tags"]
    assert wait_job_finished(operator, job_id) == "finishedSuccessful", stack.flow_run_failure(
        stack.prefect("GET", f"/flow_runs/{retry['id']}").json())
    stack.note(f"fault: {kind} flow-run container killed mid-write: Crashed after {crashed_s:.0f}s, resumed run "
               f"started after {retried_s:.0f}s, job finishedSuccessful {time.monotonic() - killed_at:.0f}s after the kill")
    assert retried_s <= WORKER_SEEN_BOUND_S
    assert len(job_runs(stack, kind, job_id)) == 2


def kill_expecting_report(operator, kind: str, job_id: str, run_id: str) -> None:
    """Kill the job's run with crash retries off: the recovery must report the job failed, within the bound."""
    stack = operator.stack
    with crash_retries(stack, 0):
        killed_at = kill_flow_run_container(stack, run_id)
        assert wait_job_finished(operator, job_id) == "finishedUnsuccessful"
        reported_s = time.monotonic() - killed_at
    stack.note(f"fault: {kind} flow-run container killed mid-write, no crash retries: finishedUnsuccessful "
               f"{reported_s:.0f}s after the kill")
    assert reported_s <= WORKER_SEEN_BOUND_S
    assert [r["id"] for r in job_runs(stack, kind, job_id)] == [run_id]  # not started again
    assert_nothing_left_running(stack, [run_id])


def iso(value: str) -> datetime:
    """A timestamp of Prefect or Docker (nanoseconds, `Z`) as a datetime."""
    head, _, fraction = value.replace("Z", "").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction.split('+')[0] + '000000')[:6]}+00:00")


def state_history(stack, run_id: str) -> str:
    """The states the run went through, e.g. "Pending Running Completed"."""
    states = stack.prefect("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    return " ".join(state["name"] for state in sorted(states, key=lambda state: state["timestamp"]))


def server_started(stack) -> datetime:
    """When the running prefect-server container started."""
    started = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", stack.services()["prefect-server"]["ID"]],
                             capture_output=True, text=True, check=True).stdout.strip()
    return iso(started)


def job_status(operator, job_id: str) -> str | None:
    return operator.job(job_id).get("jobStatusMessage")


def wait_job_finished(operator, job_id: str, timeout_s: float = JOB_END_S) -> str:
    return poll(lambda: (status := job_status(operator, job_id)) in ("finishedSuccessful", "finishedUnsuccessful")
                and status, timeout_s, f"end of job {job_id} in SciCat")


def start_archive(operator, files: int = FILES) -> tuple[str, dict, dict]:
    pid = operator.ingest_dataset(files, FILE_SIZE)
    job, started = operator.create_job("archive", [pid])
    return pid, job, started


def archive_mid_write(operator, files: int = FILES) -> tuple[str, str, str, dict[str, tuple[int, int]]]:
    """A new dataset's archive job, once it is writing: pid, job id, run id and the datablocks finished so far."""
    pid, job, started = start_archive(operator, files)
    run_id = str(started["uuid"])
    return pid, job["id"], run_id, wait_mid_archive_write(operator.stack, pid, run_id)


def retrieval_mid_upload(operator) -> tuple[str, str, str]:
    """A retrieve job of an archived dataset, once it is uploading: pid, job id and run id."""
    pid = archived_dataset(operator)
    operator.drop_retrieved_copy(pid)  # an earlier test's copy would be reused, with nothing uploaded
    job, started = operator.create_job("retrieve", [pid])
    run_id = str(started["uuid"])
    wait_mid_upload(operator, pid, run_id)
    return pid, job["id"], run_id


def archived_dataset(operator) -> str:
    """A dataset archived by an earlier test of the module, or one archived now."""
    if "pid" not in SHARED:
        pid, job, started = start_archive(operator)
        run = operator.wait(started, timeout_s=JOB_END_S)
        assert run["state_type"] == "COMPLETED", operator.stack.flow_run_failure(run)
        operator.assert_archived(pid, job["id"])
        SHARED["pid"] = pid
    return SHARED["pid"]


# --- the tests ---

def test_prefect_server_restarted_mid_write_the_archive_finishes_without_rewriting(stack, operator):
    pid, job_id, run_id, before = archive_mid_write(operator)
    start = time.monotonic()
    stack.compose("restart", "prefect-server")
    stack.compose("up", "-d", "--wait")
    stack.record_timing("fault: prefect-server restart mid-write, until the stack is healthy again",
                        time.monotonic() - start)

    run = stack.wait_for_flow_run(run_id, timeout_s=JOB_END_S)
    stack.record_timing("fault: prefect-server restart mid-write, restart to job end", time.monotonic() - start)
    stack.note(f"fault: prefect-server restart mid-write, the run's states: {state_history(stack, run_id)}")
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert [r["id"] for r in job_runs(stack, "archive", job_id)] == [run_id]  # finished by itself, not resumed
    operator.assert_archived(pid, job_id)
    after = finished_datablocks(datablocks_folder(stack, pid))
    assert {name: after.get(name) for name in before} == before, "datablocks finished before the restart were rewritten"
    assert len(before) < FILES, "every datablock was written before the restart: not mid-write"
    assert iso(run["end_time"]) > server_started(stack), "the run ended before the server was back: not mid-job"
    assert_nothing_left_running(stack, [run_id])
    operator.assert_lts_holds_originals(pid)
    SHARED["pid"] = pid


def test_killed_archival_run_is_resumed_without_a_human(stack, operator):
    pid, job_id, run_id, before = archive_mid_write(operator)
    kill_expecting_resume(operator, "archive", job_id, run_id)

    operator.assert_archived(pid, job_id)
    after = finished_datablocks(datablocks_folder(stack, pid))
    assert {name: after.get(name) for name in before} == before, "datablocks finished before the kill were rewritten"
    assert len(before) < FILES, "every datablock was written before the kill: not mid-write"
    assert_nothing_left_running(stack, [r["id"] for r in job_runs(stack, "archive", job_id)])
    operator.assert_lts_holds_originals(pid)


def test_killed_archival_run_without_crash_retries_is_reported_failed(stack, operator):
    pid, job_id, run_id, _ = archive_mid_write(operator)
    landing_before = operator.landing_zone(pid)
    kill_expecting_report(operator, "archive", job_id, run_id)

    lifecycle = operator.dataset(pid)["datasetlifecycle"]
    assert lifecycle["archiveStatusMessage"] == "scheduleArchiveJobFailed"
    assert "retries exhausted (0 of ARCHIVER_CRASH_RETRIES=0)" in lifecycle["archiveReturnMessage"]
    assert (lifecycle["archivable"], lifecycle["retrievable"]) == (True, False)
    assert operator.datablocks(pid) == []  # nothing registered for a dataset that is not archived
    assert partial_files(datablocks_folder(stack, pid)) == []
    assert operator.landing_zone(pid) == landing_before  # the originals are still there for a new attempt


def test_killed_retrieval_run_is_redone_without_a_human(stack, operator):
    pid, job_id, run_id = retrieval_mid_upload(operator)
    kill_expecting_resume(operator, "retrieve", job_id, run_id)

    assert operator.unfinished_uploads(pid) == []
    assert_nothing_left_running(stack, [r["id"] for r in job_runs(stack, "retrieve", job_id)])
    operator.assert_retrieved(pid, job_id)


def test_killed_retrieval_run_without_crash_retries_is_reported_failed(stack, operator):
    pid, job_id, run_id = retrieval_mid_upload(operator)
    kill_expecting_report(operator, "retrieve", job_id, run_id)

    lifecycle = operator.dataset(pid)["datasetlifecycle"]
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
    assert "retries exhausted (0 of ARCHIVER_CRASH_RETRIES=0)" in lifecycle["retrieveReturnMessage"]
    assert lifecycle["archiveStatusMessage"] == "datasetOnArchiveDisk"  # the archive itself is untouched
    assert operator.unfinished_uploads(pid) == []
    assert operator.retrieval_bucket(pid) == []
    operator.assert_lts_holds_originals(pid)


def test_archival_worker_killed_mid_write_its_run_goes_on_and_finishes(stack, operator):
    pid, job_id, run_id, _ = archive_mid_write(operator)
    worker = stack.services()["prefect-archival-worker"]["ID"]
    subprocess.run(["docker", "kill", worker], capture_output=True, text=True, check=True)
    killed_at = time.monotonic()
    try:
        run = stack.wait_for_flow_run(run_id, timeout_s=JOB_END_S)
        running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", worker], capture_output=True,
                                 text=True, check=True).stdout.strip()
        stack.note(f"fault: archival worker killed mid-write: its run ended {run['state_name']} "
                   f"{time.monotonic() - killed_at:.0f}s later; the worker restarted by itself: {running}")
    finally:
        stack.compose("up", "-d", "--wait", "prefect-archival-worker")
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert [r["id"] for r in job_runs(stack, "archive", job_id)] == [run_id]  # tracked, never taken for dead
    operator.assert_archived(pid, job_id)
    assert_nothing_left_running(stack, [run_id])
    operator.assert_lts_holds_originals(pid)


def test_whole_stack_down_and_up_mid_write_ends_the_job_clearly(stack, operator):
    """`down` / `up` (no -v) of the archiver's services while a run writes. The flow-run container is not a
    compose container and lives on; the Prefect API is gone meanwhile. The SciCat development server and
    the S3 stand-in keep their data in memory only, where SciCat is outside the stack and MinIO keeps its
    data on its volume: they stay up, as the real ones would keep their data. A dataset twice the size
    of the others: `down` stops the workers first, and the Prefect server must go while bytes still move."""
    pid, job_id, run_id, _ = archive_mid_write(operator, files=2 * FILES)
    # What `down` does to them, done by Docker: compose would take the SciCat stand-in down with the API it
    # depends on, and `up` would recreate it.
    services = sorted(stack.enabled_services() - {"scicat", "minio"})
    containers = [stack.services()[service]["ID"] for service in services]
    start = time.monotonic()
    subprocess.run(["docker", "stop", "--time", "2", *containers], capture_output=True, text=True, check=True)
    subprocess.run(["docker", "rm", *containers], capture_output=True, text=True, check=True)
    down_s = time.monotonic() - start
    stack.compose("up", "-d", "--wait", "--no-deps", *services)
    up_s = time.monotonic() - start

    outcome = wait_job_finished(operator, job_id, timeout_s=JOB_END_S)
    runs = job_runs(stack, "archive", job_id)
    first = next(r for r in runs if r["id"] == run_id)
    stack.note(f"fault: stack down ({down_s:.0f}s) and up again ({up_s:.0f}s after down began) mid-write: job "
               f"{outcome} {time.monotonic() - start:.0f}s after down began; first run {first['state_name']}, "
               f"{len(runs) - 1} crash retr{'y' if len(runs) == 2 else 'ies'}; its states: {state_history(stack, run_id)}")
    runs = [stack.wait_for_flow_run(r["id"], timeout_s=120) for r in runs]
    assert max(iso(r["end_time"]) for r in runs) > server_started(stack), "the job ended before the stack was up again"
    assert_nothing_left_running(stack, [r["id"] for r in runs])
    assert partial_files(datablocks_folder(stack, pid)) == []
    if outcome == "finishedSuccessful":
        operator.assert_archived(pid, job_id)
        operator.assert_lts_holds_originals(pid)
    else:
        lifecycle = operator.dataset(pid)["datasetlifecycle"]
        assert lifecycle["archiveStatusMessage"] == "scheduleArchiveJobFailed", lifecycle
        assert operator.datablocks(pid) == []
        assert len(operator.landing_zone(pid)) == 2 * FILES
    # The stack works on after it: the Prefect API answers through the proxy.
    assert httpx.get(f"{stack.prefect_api}/health", timeout=30).status_code == 200
