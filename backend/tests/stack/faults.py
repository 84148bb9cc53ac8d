"""What the fault tests of the stack share: watching the LTS volume and the retrieval bucket from this
machine while bytes move, the job's runs in Prefect, and its outcome in SciCat."""

from __future__ import annotations

import contextlib
import subprocess
import time
from datetime import datetime
from pathlib import Path

from archiver.config.limits import load_limits_file
from archiver.packing import naming
from tests import lts_layout

REPO = Path(__file__).resolve().parents[3]
FILES, FILE_SIZE = 6, 64 * 1024 * 1024  # 384 MB, one datablock per file (written in about 0.5 s each here)
JOB_END_S = 600


# --- the LTS volume and the retrieval bucket, watched from this machine ---


def datablocks_folder(stack, pid: str) -> Path:
    return lts_layout.datablocks_folder(stack.lts_host_path(), pid)


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
        return (
            f"the run ended {run['state_name']} first"
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            else None
        )

    return reason


def wait_mid_archive_write(stack, pid: str, run_id: str) -> dict[str, tuple[int, int]]:
    """Once a datablock is finished and the next one half written: the finished ones, with inode and mtime."""
    folder = datablocks_folder(stack, pid)

    def mid_write():
        finished = finished_datablocks(folder) if folder.exists() else {}
        return finished if finished and partial_files(folder) else None

    return poll(
        mid_write, 300, "datablock written after a finished one", interval=0.01, give_up=run_ended(stack, run_id)
    )


def wait_mid_upload(operator, pid: str, run_id: str) -> list[str]:
    return poll(
        lambda: operator.unfinished_uploads(pid),
        300,
        "upload to the retrieval bucket in progress",
        interval=0.01,
        give_up=run_ended(operator.stack, run_id),
    )


# --- Prefect: the job's runs, what is left of them, the crash retries ---


def job_runs(stack, job_kind: str, job_id: str) -> list[dict]:
    """Every run of the job (the first and any crash retry; they share the name), oldest first."""
    return stack.prefect(
        "POST",
        "/flow_runs/filter",
        json={
            "flow_runs": {"name": {"any_": [f"{job_kind}-job-{job_id}"]}},
            "sort": "EXPECTED_START_TIME_ASC",
        },
    ).json()


def runs_and_subflows(stack, run_ids: list[str]) -> list[dict]:
    """The runs and every subflow run below them."""
    runs, parents = [], list(run_ids)
    while parents:
        runs += stack.prefect("POST", "/flow_runs/filter", json={"flow_runs": {"id": {"any_": parents}}}).json()
        children = stack.prefect(
            "POST", "/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": parents}}}
        ).json()
        parents = [child["id"] for child in children]
    return runs


def task_runs_below(stack, run_ids: list[str], **task_run_filter) -> list[dict]:
    """Task runs of the runs and their subflows, e.g. `tags={"all_": [tag]}`."""
    flow_run_ids = [r["id"] for r in runs_and_subflows(stack, run_ids)]
    return stack.prefect(
        "POST", "/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": flow_run_ids}, **task_run_filter}}
    ).json()


def assert_nothing_left_running(stack, run_ids: list[str], task_records_lost: bool = False) -> None:
    """No subflow or task run of the job's runs unfinished, no tag slot taken, no recovery run unfinished.

    `task_records_lost`: Prefect's server drops the task-run state events it receives while its database is
    down, so a task run that ended then may still show Running; those are noted, not failed (the flow runs,
    the slots and the outcome are still checked)."""
    runs = runs_and_subflows(stack, run_ids)
    assert len(runs) > len(run_ids), "the job's dataset subflow runs are missing"
    assert [f"{r['name']} {r['state_name']}" for r in runs if r["state_type"] not in FINAL] == []
    task_runs = task_runs_below(stack, run_ids)
    assert task_runs, "the job's task runs are missing"
    unfinished = [f"{t['name']} {t['state_name']}" for t in task_runs if t["state_type"] not in FINAL]
    if task_records_lost and unfinished:
        stack.note(f"task runs whose end Prefect did not record (its database was down): {unfinished}")
    else:
        assert unfinished == []
    for limit in load_limits_file(REPO / "concurrency-limits.toml").by_name().values():
        assert stack.prefect("GET", f"/concurrency_limits/tag/{limit.tag}").json()["active_slots"] == [], limit.tag

    def recoveries_unfinished() -> list[str]:
        recoveries = [
            r
            for run_id in run_ids
            for r in stack.prefect(
                "POST", "/flow_runs/filter", json={"flow_runs": {"name": {"like_": f"recover-%{run_id}"}}}
            ).json()
        ]
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
    started = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", stack.services()["prefect-server"]["ID"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return iso(started)


def job_status(operator, job_id: str) -> str | None:
    return operator.job(job_id).get("jobStatusMessage")


def wait_job_finished(operator, job_id: str, timeout_s: float = JOB_END_S) -> str:
    return poll(
        lambda: (status := job_status(operator, job_id)) in ("finishedSuccessful", "finishedUnsuccessful") and status,
        timeout_s,
        f"end of job {job_id} in SciCat",
    )


def start_archive(operator, files: int = FILES) -> tuple[str, dict, dict]:
    pid = operator.ingest_dataset(files, FILE_SIZE)
    job, started = operator.create_job("archive", [pid])
    return pid, job, started


def archive_mid_write(operator, files: int = FILES) -> tuple[str, str, str, dict[str, tuple[int, int]]]:
    """A new dataset's archive job, once it is writing: pid, job id, run id and the datablocks finished so far."""
    pid, job, started = start_archive(operator, files)
    run_id = str(started["uuid"])
    return pid, job["id"], run_id, wait_mid_archive_write(operator.stack, pid, run_id)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def flow_run_container_id(stack, run_id: str) -> str:
    return stack.flow_run_container(stack.prefect("GET", f"/flow_runs/{run_id}").json())["Id"]


def logs_naming(stack, text: str, limit: int = 200) -> list[str]:
    """The latest flow-run log lines that contain `text` (for assertion messages)."""
    entries = stack.prefect("POST", "/logs/filter", json={"sort": "TIMESTAMP_DESC", "limit": limit}).json()
    return [f"{e['timestamp']} {e['level']} {e['message'][:400]}" for e in reversed(entries) if text in e["message"]]


def assert_archived_once(operator, pid: str, job_id: str, before: dict[str, tuple[int, int]]) -> None:
    """SciCat's job and dataset say archived, one record per datablock (assert_archived counts them), the
    tars hold the uploaded bytes, and datablocks finished before the fault were not written again."""
    operator.assert_archived(pid, job_id)
    after = finished_datablocks(datablocks_folder(operator.stack, pid))
    assert {name: after.get(name) for name in before} == before, (
        f"datablocks finished before the fault were rewritten: {sorted(before)} before, now {sorted(after)}\n"
        + "\n".join(logs_naming(operator.stack, pid))
    )
    operator.assert_lts_holds_originals(pid)
