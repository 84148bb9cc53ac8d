"""Job overhead under `archiver dev` (issue 16, item 3): where the seconds of a SciCat archive job go.

Runs the local pipeline (Prefect server, S3 server, SciCat development server, archiver API, a runner serving
the deployments), then archives small datasets through SciCat jobs and prints each job's phases as Prefect
recorded them (archiver.timeline), and one large dataset whose job time is set beside the engine alone.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from archiver.local_pipeline import DevOptions, pipeline
from archiver.local_services import free_port, poll_until, postgres_database
from archiver.timeline import Phase, format_phases, job_phases, slowest_tasks


def _final_state(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state if state and state.is_final() else None


def _create_dataset(num_files: int, file_size_mb: float) -> str:
    from prefect.deployments import run_deployment

    pid = f"20.500.12269/bench-overhead-{uuid.uuid4()}"
    run = run_deployment(
        "create_test_dataset/dataset_creation",
        timeout=0,
        parameters={"num_files": num_files, "file_size_mb": file_size_mb, "dataset_id": pid},
    )
    state = poll_until(lambda: _final_state(run.id), 600, f"test dataset {pid}")
    if not state.is_completed():
        raise RuntimeError(f"creating test dataset {pid} ended {state.name}")
    return pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children that have ended (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def archive_job(scicat, pid: str) -> tuple[list[Phase], str, UUID]:
    """Archive one dataset through a SciCat job; its phases, the run's final state name, the run's id."""
    from archiver.job_command import wait_for_run

    created = datetime.now(UTC)
    job = scicat.create_job("archive", [pid])
    run_id = wait_for_run(job.id, 60)
    state = poll_until(lambda: _final_state(run_id), 1800, f"the archive run of job {job.id}", interval=0.2)
    return job_phases(run_id, created), state.name, run_id


def second_job_slot_wait(scicat, count: int, size_mb: float) -> str:
    """A 1 MiB archive job started once a large one writes to the LTS (MOVE_TO_LTS_LIMIT 1): how long its first
    write waited for the slot, which the large one gives back at the end of a slice (LTS_SLOT_SLICE_SECONDS)."""
    from archiver.config.runtime import load_run_configuration
    from archiver.job_command import wait_for_run
    from archiver.timeline import first_lts_write_wait

    large, small = _create_dataset(count, size_mb), _create_dataset(1, 1.0)
    large_run = wait_for_run(scicat.create_job("archive", [large]).id, 60)
    poll_until(lambda: first_lts_write_wait(large_run) is not None, 600, "the large job's first LTS write", 0.2)
    small_run = wait_for_run(scicat.create_job("archive", [small]).id, 60)
    for run_id in (large_run, small_run):
        poll_until(lambda run_id=run_id: _final_state(run_id), 1800, f"archive run {run_id}", interval=0.2)
    slice_s = load_run_configuration().settings.lts.slot_slice_s
    waited = first_lts_write_wait(small_run)
    return (
        f"slot wait of a second job's first LTS write behind a {count} x {size_mb:g} MiB job: {waited:.1f} s "
        f"(LTS_SLOT_SLICE_SECONDS {slice_s:g}; target <= one slice + 2 s)"
    )


def measure(
    work: Path, small_jobs: int = 3, large: tuple[int, float] | None = (32, 64.0), engine_seconds: float | None = None
) -> list[str]:
    """The report lines: each small job's phases, then the large job against the engine alone."""
    from archiver.config.settings import ScicatSection
    from archiver.scicat.client import ScicatClient, ScicatCredentials

    lines = []
    small_totals = []
    with contextlib.ExitStack() as stack:
        # Prefect on PostgreSQL, as deployed: on SQLite, concurrent writes get 503s retried after ~2 s each.
        database_url = stack.enter_context(postgres_database())
        options = DevOptions(
            workdir=work / "overhead",
            target_size_mb=200,
            prefect_port=free_port(),
            keep_running=False,
            database_url=database_url,
        )
        running = stack.enter_context(pipeline(options))
        credentials = ScicatCredentials.from_secret_files(running.secrets_dir, environ={})
        with ScicatClient(ScicatSection(endpoint=running.scicat_url), credentials) as scicat:
            for i in range(small_jobs):
                pid = _create_dataset(1, 1.0)
                phases, outcome, run_id = archive_job(scicat, pid)
                lines += format_phases(f"archive job {i + 1} of a 1 MiB dataset, local runner ({outcome}):", phases)
                small_totals.append(sum(p.seconds for p in phases))
                lines.append(
                    "  slowest tasks: " + ", ".join(f"{t.name} {t.seconds:.2f} s" for t in slowest_tasks(run_id))
                )
            if large:
                count, size_mb = large
                pid = _create_dataset(count, size_mb)
                cpu_before = cpu_seconds(running.prefect_pid)
                phases, outcome, run_id = archive_job(scicat, pid)
                server_cpu = cpu_seconds(running.prefect_pid) - cpu_before
                lines += format_phases(f"archive job of {count} x {size_mb:g} MiB, local runner ({outcome}):", phases)
                total = sum(p.seconds for p in phases)
                gib = count * size_mb / 1024
                lines.append(
                    f"  Prefect server CPU during the job: {server_cpu:.1f} s, {server_cpu / gib:.2f} s per GiB; "
                    f"{len(slowest_tasks(run_id, count=100_000))} task runs"
                )
                if engine_seconds:
                    lines.append(
                        f"  job / engine alone (archive+verify, same shape): {total:.1f} s / "
                        f"{engine_seconds:.1f} s = {total / engine_seconds:.2f}x "
                        "(target <= 1.25x for 2 GiB, 1.10x for 20 GiB)"
                    )
                    if small_totals:
                        # What grows with the data: the job, less a 1 MiB job's fixed cost, less the engine's time.
                        fixed = statistics.median(small_totals)
                        extra = total - fixed - engine_seconds
                        lines.append(
                            f"  beyond a 1 MiB job's {fixed:.1f} s and the engine's {engine_seconds:.1f} s: "
                            f"{extra:.1f} s, {extra / gib:.2f} s per GiB (Prefect's per-task slot and state "
                            "calls, and the server's CPU beside the data's)"
                        )
                lines.append(second_job_slot_wait(scicat, count, size_mb))
    return lines


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        started = time.monotonic()
        for line in measure(Path(tmp), large=None):
            print(line, flush=True)
        print(f"({time.monotonic() - started:.0f} s)")
