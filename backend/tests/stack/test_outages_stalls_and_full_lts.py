"""Faults while an archive job writes, beyond its own run: the Prefect server's database restarted,
SciCat unreachable while datablocks are registered, the flow-run container frozen past the zombie
window and woken after its job was handed on, and the LTS filling up.

Each fault hits a job of several datablocks while bytes move (watched on the LTS volume from this
machine, as in test_faults.py). Afterwards SciCat's job and dataset must agree with what is on the
LTS: one record per datablock, every tar holding the uploaded bytes, nothing half written, no tag
slot left taken. The time from the fault's end to SciCat's final state goes to the tier's summary
(and to docs/deployment.md, "Faults while jobs run").
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archiver.packing import naming
from tests import lts_layout
from tests.integration.task_history import most_at_once
from tests.stack.faults import (
    FILE_SIZE,
    FILES,
    archive_mid_write,
    assert_archived_once,
    assert_nothing_left_running,
    datablocks_folder,
    docker,
    finished_datablocks,
    flow_run_container_id,
    iso,
    job_runs,
    partial_files,
    poll,
    run_ended,
    start_archive,
    state_history,
    task_runs_below,
    wait_job_finished,
)

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

DATABASE_DOWN_S = 60
SCICAT_DOWN_S = 90
WRITE_TAG = "move-datablocks-to-lts"
# The zombie automation marks a run without heartbeats for ARCHIVER_ZOMBIE_WINDOW_S (90 s) Crashed; its
# recovery then starts the crash retry. Bounds with room for this 2-core machine.
CRASHED_BOUND_S = 240
RETRY_BOUND_S = 180


def test_the_prefect_database_down_mid_write_the_job_rides_it_out(stack, operator):
    """PostgreSQL killed and started again a minute later: the server answers 500 meanwhile (its pooled
    connections are dead); the run's calls that are safe to repeat, its slot releases among them, wait."""
    pid, job_id, run_id, before = archive_mid_write(operator)
    docker("kill", stack.services()["postgres"]["ID"])
    time.sleep(DATABASE_DOWN_S)
    stack.compose("start", "postgres")
    back_at = time.monotonic()

    outcome = wait_job_finished(operator, job_id)
    final_s = time.monotonic() - back_at
    run = stack.wait_for_flow_run(run_id, timeout_s=120)
    stack.note(
        f"fault: PostgreSQL down {DATABASE_DOWN_S}s mid-write: job {outcome} {final_s:.0f}s after it was "
        f"started again; the run's states: {state_history(stack, run_id)}"
    )
    assert outcome == "finishedSuccessful", stack.flow_run_failure(run)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert [r["id"] for r in job_runs(stack, "archive", job_id)] == [run_id]  # ridden out, not resumed
    assert len(before) < FILES, "every datablock was written before the fault: not mid-write"
    assert_archived_once(operator, pid, job_id, before)
    # The slots were given back, not left to lease expiry.
    assert_nothing_left_running(stack, [run_id], task_records_lost=True)


def test_scicat_unreachable_while_datablocks_are_registered_each_is_registered_once(stack, operator):
    """SciCat frozen (`docker pause`) for 90 s from the last datablock's write on: its kernel still takes
    the connections, so registrations time out without an answer and SciCat carries them out when it
    wakes. The registration's retries must find those records instead of posting again."""
    pid, job, started = start_archive(operator)
    job_id, run_id = job["id"], str(started["uuid"])
    last = datablocks_folder(stack, pid) / naming.datablock_name(pid, FILES - 1)
    poll(
        lambda: naming.partial_path(last).exists() or last.exists(),
        300,
        "write of the last datablock",
        interval=0.01,
        give_up=run_ended(stack, run_id),
    )
    scicat = stack.services()["scicat"]["ID"]
    docker("pause", scicat)
    try:
        time.sleep(SCICAT_DOWN_S)
    finally:
        docker("unpause", scicat)
    back_at = time.monotonic()

    outcome = wait_job_finished(operator, job_id)
    final_s = time.monotonic() - back_at
    registrations = task_runs_below(stack, [run_id], name={"like_": "scicat: register%"})
    tries = max(t["run_count"] for t in registrations)
    stack.note(
        f"fault: SciCat frozen {SCICAT_DOWN_S}s while datablocks were registered: job {outcome} "
        f"{final_s:.0f}s after it woke; {len(operator.datablocks(pid))} datablock records for {FILES} tars; "
        f"a registration tried {tries} times"
    )
    assert tries > 1, "no registration met the outage: the fault came too late to test anything"
    assert outcome == "finishedSuccessful", stack.flow_run_failure(stack.wait_for_flow_run(run_id, timeout_s=120))
    assert_archived_once(operator, pid, job_id, {})
    assert_nothing_left_running(stack, [run_id])


def test_a_frozen_run_woken_after_its_job_was_handed_on_changes_nothing(stack, operator):
    """The flow-run container frozen mid-write (`docker pause`) until the zombie automation has marked its
    run Crashed and the crash retry runs, waiting for the dataset lock the frozen process holds. Woken,
    the old process must stop before its next write, registration or SciCat call; the retry finishes."""
    # Twelve datablocks: a write slice takes no Prefect call per datablock, and six were all written (and the
    # run ended) before the container could be paused.
    pid, job_id, run_id, before = archive_mid_write(operator, files=2 * FILES)
    container = flow_run_container_id(stack, run_id)
    docker("pause", container)
    frozen_at = time.monotonic()
    try:
        poll(
            lambda: stack.prefect("GET", f"/flow_runs/{run_id}").json()["state_type"] == "CRASHED",
            CRASHED_BOUND_S,
            "Crashed state of the frozen run",
            interval=2,
        )
        crashed_s = time.monotonic() - frozen_at
        poll(
            lambda: [r for r in job_runs(stack, "archive", job_id)[1:] if r["state_type"] == "RUNNING"],
            RETRY_BOUND_S,
            "crash retry of the job running",
            interval=2,
        )
        time.sleep(10)  # the retry reaches the dataset lock
        assert operator.job(job_id).get("jobStatusMessage") not in ("finishedSuccessful", "finishedUnsuccessful"), (
            "the job was reported finished while its first run was frozen and held the dataset lock"
        )
    finally:
        docker("unpause", container)
    woke = datetime.now(UTC)
    woke_at = time.monotonic()

    outcome = wait_job_finished(operator, job_id)
    final_s = time.monotonic() - woke_at
    poll(lambda: docker("inspect", "-f", "{{.State.Running}}", container) == "false", 120, "end of the woken process")
    runs = [stack.wait_for_flow_run(r["id"], timeout_s=120) for r in job_runs(stack, "archive", job_id)]
    stack.note(
        f"fault: flow-run container frozen {woke_at - frozen_at:.0f}s mid-write (Crashed after "
        f"{crashed_s:.0f}s): job {outcome} {final_s:.0f}s after it woke; first run's states: "
        f"{state_history(stack, run_id)}"
    )
    assert outcome == "finishedSuccessful", stack.flow_run_failure(runs[-1])
    assert len(runs) == 2 and "crash-retry:1" in runs[1]["tags"], [r["name"] for r in runs]
    # A write that was waiting for its LTS slot when the run froze may start once woken: it must then find
    # the run no longer its own before writing (OwnershipCheck) and fail, never complete.
    writes_after_waking = [
        f"{t['name']}: {t['state_type']}"
        for t in task_runs_below(stack, [run_id], tags={"all_": [WRITE_TAG]})
        if t["start_time"] and iso(t["start_time"]) > woke and t["state_type"] != "FAILED"
    ]
    assert writes_after_waking == [], "the woken run went on writing to the LTS"
    writes = task_runs_below(stack, [r["id"] for r in runs], tags={"all_": [WRITE_TAG]})
    limit = stack.prefect("GET", f"/concurrency_limits/tag/{WRITE_TAG}").json()["concurrency_limit"]
    spans = [(iso(t["start_time"]), iso(t["end_time"])) for t in writes if t["start_time"] and t["end_time"]]
    assert most_at_once(spans) <= limit, sorted(spans)
    assert_archived_once(operator, pid, job_id, before)
    assert_nothing_left_running(stack, [r["id"] for r in runs])


@contextlib.contextmanager
def small_filesystem(folder: Path, size_mb: int):
    """A tmpfs of `size_mb` mounted at `folder` on the LTS volume (flow-run containers started afterwards see
    it: Docker binds a volume with its submounts). Its files are copied to the volume when it goes."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(folder)], check=True)
    try:
        yield lambda new_size_mb: subprocess.run(
            ["mount", "-o", f"remount,size={new_size_mb}m", str(folder)], check=True
        )
    finally:
        with tempfile.TemporaryDirectory() as kept:
            shutil.copytree(folder, Path(kept) / "content", symlinks=True)
            subprocess.run(["umount", str(folder)], check=True)
            shutil.copytree(Path(kept) / "content", folder, symlinks=True, dirs_exist_ok=True)


def test_a_full_lts_fails_the_dataset_at_once_and_a_rerun_resumes(stack, operator):
    """Room for two of the six datablocks: the third meets ENOSPC. The dataset fails at once (no storage
    retry, the rest not tried), SciCat is told within a minute, the verified datablocks stay; with room
    again, a new job keeps them and writes the rest."""
    pid = operator.ingest_dataset(FILES, FILE_SIZE)
    with small_filesystem(lts_layout.dataset_folder(stack.lts_host_path(), pid), size_mb=150) as resize:
        job, started = operator.create_job("archive", [pid])
        created_at = time.monotonic()
        outcome = wait_job_finished(operator, job["id"])
        final_s = time.monotonic() - created_at
        run = stack.wait_for_flow_run(str(started["uuid"]), timeout_s=120)
        lifecycle = operator.dataset(pid)["datasetlifecycle"]
        kept = finished_datablocks(datablocks_folder(stack, pid))
        stack.note(
            f"fault: LTS full at the third of {FILES} datablocks: job {outcome} {final_s:.0f}s after it was "
            f"created; {len(kept)} datablock(s) kept"
        )
        assert outcome == "finishedUnsuccessful", stack.flow_run_failure(run)
        assert final_s < 60 + 30, "SciCat was not told within a minute (30 s allowed for the run to start)"
        assert lifecycle["archiveStatusMessage"] == "scheduleArchiveJobFailed", lifecycle
        assert "No space left on device" in lifecycle["archiveReturnMessage"], lifecycle
        assert (lifecycle["archivable"], lifecycle["retrievable"]) == (True, False)
        assert operator.datablocks(pid) == []
        assert partial_files(datablocks_folder(stack, pid)) == []
        assert 1 <= len(kept) < FILES and all(name.endswith(naming.TAR_SUFFIX) for name in kept), kept
        assert len(operator.landing_zone(pid)) == FILES
        assert_nothing_left_running(stack, [run["id"]])

        resize(FILES * FILE_SIZE // 2**20 + 50)
        job, started = operator.create_job("archive", [pid])
        assert wait_job_finished(operator, job["id"]) == "finishedSuccessful", stack.flow_run_failure(
            stack.wait_for_flow_run(str(started["uuid"]), timeout_s=120)
        )
        assert_archived_once(operator, pid, job["id"], kept)
