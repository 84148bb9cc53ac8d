"""LTS limits measured from Prefect's task-run history, and cancellation of a served archival run."""

from __future__ import annotations

import contextvars
import threading
from datetime import UTC, datetime

import pytest

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.local_services import poll_until
from tests.integration.served import start_served_archival
from tests.integration.task_history import asked_at, most_at_once, tagged_task_runs_since

pytestmark = pytest.mark.integration


def lts_writes_since(since: datetime) -> list:
    return tagged_task_runs_since("move-datablocks-to-lts", "write ", since)


@pytest.mark.parametrize("limit", [1, 2])
def test_two_archivals_at_once_respect_move_to_lts_limit(pipeline, limit):
    """Running intervals (start -> end) never overlap more than the limit, while the demand (submitted -> end)
    did exceed it: the writes had to queue for a slot, so the limit was really exercised."""
    # Free-space waits and verification unbounded, so that writes are what queues.
    pipeline.set_limits(MOVE_TO_LTS_LIMIT=limit, LTS_FREE_LIMIT=16, VERIFY_LTS_LIMIT=16)
    # 3 MiB files at a 1 MB target: one file a datablock, each write long enough that eight writes
    # asked for at once (2 jobs x 2 datasets x 2 datablocks) overlap even on a busy machine.
    jobs = [
        pipeline.new_job("archive", [create_test_dataset_flow(num_files=4, file_size_mb=3.0) for _ in range(2)])
        for _ in range(2)
    ]
    since = datetime.now(UTC)
    errors = []

    def run(job_id):
        try:
            archive_datasets_flow(job_id=job_id)
        except Exception as e:  # reported below
            errors.append(e)

    # Each thread gets a copy of this context, which holds the test server's Prefect settings.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, job_id)) for job_id in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert errors == []

    writes = lts_writes_since(since)
    assert len(writes) == 2 * 2 * 4  # jobs x datasets x datablocks
    running = [(w.start_time, w.end_time) for w in writes]
    demand = [(asked_at(w), w.end_time) for w in writes]
    assert most_at_once(running) <= limit
    assert most_at_once(demand) > limit


def test_cancelled_archival_cleans_up_and_reports(pipeline, serve_deployments):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    pid = create_test_dataset_flow(num_files=2, file_size_mb=0.2)
    landing_before = pipeline.landing_keys(pid)
    job_id = pipeline.new_job("archive", [pid])
    # The LTS never has enough free space: the run waits in wait-for-free-space until cancelled.
    serve_deployments(LTS_FREE_SPACE_PERCENTAGE="99.999")
    run = start_served_archival(job_id)
    with get_client(sync_client=True) as client:
        poll_until(
            lambda: pipeline.scicat.get_dataset(pid).datasetlifecycle.archive_status_message == "started",
            what="archival started",
        )
        client.set_flow_run_state(run.id, Cancelling(), force=True)
        poll_until(lambda: client.read_flow_run(run.id).state.is_final(), what="run cancelled")
        assert client.read_flow_run(run.id).state.type.value == "CANCELLED"

    poll_until(
        lambda: pipeline.job(job_id).get("jobStatusMessage") == "finishedUnsuccessful", what="job reported failed"
    )
    lifecycle = pipeline.scicat.get_dataset(pid).datasetlifecycle.to_wire()
    assert lifecycle["archiveStatusMessage"] == "scheduleArchiveJobFailed"
    assert pipeline.scicat.get_datablocks(pid) == []
    assert pipeline.landing_keys(pid) == landing_before


def test_failed_job_run_retried_from_prefect_finishes_the_job(pipeline, serve_deployments):
    """The operator's way to re-run a SciCat job: retry its flow run (`prefect flow-run retry`, or the UI)."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    pid = create_test_dataset_flow(num_files=3, file_size_mb=0.4)
    bucket = pipeline.settings.s3.landingzone_bucket
    [victim, *_] = pipeline.landing_keys(pid)
    saved = pipeline.s3.get_object(Bucket=bucket, Key=victim)["Body"].read()
    pipeline.s3.delete_object(Bucket=bucket, Key=victim)
    job_id = pipeline.new_job("archive", [pid])
    serve_deployments()
    run = start_served_archival(job_id)
    with get_client(sync_client=True) as client:
        poll_until(lambda: client.read_flow_run(run.id).state.is_final(), what="first attempt to end")
        assert client.read_flow_run(run.id).state.is_failed()
        assert pipeline.job(job_id)["jobStatusMessage"] == "finishedWithDatasetErrors"

        pipeline.s3.put_object(Bucket=bucket, Key=victim, Body=saved)  # the user uploads the missing file
        retry = subprocess.run(
            [sys.executable, "-m", "prefect", "flow-run", "retry", str(run.id)],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
        )
        assert retry.returncode == 0, retry.stdout + retry.stderr
        poll_until(lambda: client.read_flow_run(run.id).state.is_final(), what="retried run to end", timeout=180)
        assert client.read_flow_run(run.id).state.is_completed()

    assert pipeline.job(job_id)["jobStatusMessage"] == "finishedSuccessful"
    archive_ids = [d.archive_id for d in pipeline.scicat.get_datablocks(pid)]
    assert len(archive_ids) == len(set(archive_ids)) == 2  # 3 x 0.4 MB at a 1 MB target, none twice
    assert pipeline.landing_keys(pid) == []
