"""LTS limits measured from Prefect's task-run history, and cancellation of a served archival run."""

from __future__ import annotations

import contextvars
import threading
import tomllib
from datetime import UTC, datetime

import pytest

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.local_services import poll_until
from archiver.packing import naming
from tests import lts_layout
from tests.integration.served import start_served_archival
from tests.integration.task_history import asked_at, most_at_once, tagged_task_runs_below, tagged_task_runs_since

pytestmark = pytest.mark.integration


class ArchivalThread:
    """An archival flow run for the job, started in a thread with a copy of this context (which holds the
    test server's Prefect settings)."""

    def __init__(self, job_id: str):
        self.error: Exception | None = None
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, job_id))
        self._thread.start()

    def _run(self, job_id: str) -> None:
        try:
            archive_datasets_flow(job_id=job_id)
        except Exception as e:  # reported by join
            self.error = e

    def join(self) -> None:
        self._thread.join(600)
        assert self.error is None, self.error


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
    pids = [create_test_dataset_flow(num_files=4, file_size_mb=3.0) for _ in range(4)]
    jobs = [pipeline.new_job("archive", pids[:2]), pipeline.new_job("archive", pids[2:])]
    since = datetime.now(UTC)
    archivals = [ArchivalThread(job_id) for job_id in jobs]
    for archival in archivals:
        archival.join()

    writes = lts_writes_since(since)
    # Each dataset's datablocks were written in slices of its own (flows/lts_slices.py).
    assert {pid for pid in pids if any(pid in w.name for w in writes)} == set(pids), [w.name for w in writes]
    running = [(w.start_time, w.end_time) for w in writes]
    demand = [(asked_at(w), w.end_time) for w in writes]
    assert most_at_once(running) <= limit
    assert most_at_once(demand) > limit


def test_a_second_job_gets_the_lts_within_one_slice_of_a_long_one(pipeline):
    """MOVE_TO_LTS_LIMIT 1, LTS_SLOT_SLICE_SECONDS 2: a long archival writes its datablocks in slices, and a
    short one started while it writes waits for its first write at most one slice plus 2 s (read from the
    task-run history: its first write slice's submission to its start), the long one going on afterwards."""
    slice_s = 2
    pipeline.set_settings(LTS_SLOT_SLICE_SECONDS=slice_s)
    pipeline.set_limits(MOVE_TO_LTS_LIMIT=1, LTS_FREE_LIMIT=16, VERIFY_LTS_LIMIT=16)
    # 240 datablocks at the 1 MB target: writing them outlasts the short job's start even on an idle machine
    long = create_test_dataset_flow(num_files=240, file_size_mb=1.0)
    short = create_test_dataset_flow(num_files=2, file_size_mb=1.0)
    long_job, short_job = pipeline.new_job("archive", [long]), pipeline.new_job("archive", [short])
    since = datetime.now(UTC)
    long_archival = ArchivalThread(long_job)
    first_tar = lts_layout.datablock_path(pipeline.lts_root, naming.archive_id(long, 0))
    poll_until(first_tar.exists, 120, "the long archival's first datablock", interval=0.05)
    short_archival = ArchivalThread(short_job)
    long_archival.join()
    short_archival.join()

    # Task runs are recorded from their events: under load the short job's may come a moment later.
    writes = poll_until(
        lambda: (found := lts_writes_since(since)) and any(short in w.name for w in found) and found,
        60,
        "the short job's write slices",
    )
    long_slices = sorted((w for w in writes if long in w.name), key=lambda w: w.start_time)
    first_short = min((w for w in writes if short in w.name), key=lambda w: w.start_time)
    waited = (first_short.start_time - asked_at(first_short)).total_seconds()
    print(f"slot wait of a second job behind a long one ({len(long_slices)} slices of {slice_s} s): {waited:.1f} s")
    assert most_at_once([(w.start_time, w.end_time) for w in writes]) == 1
    assert long_slices[-1].end_time > first_short.end_time, "the long job ended before the short one wrote"
    assert waited <= slice_s + 2, [(w.name, w.start_time, w.end_time) for w in writes]


def test_a_retrieval_reads_many_datablocks_in_a_few_tagged_task_runs(pipeline):
    """20 datablocks (a 0.8 MB file each at the 1 MB target) retrieved whole, then 10 of their files alone: each
    retrieval holds the LTS_TO_RETRIEVAL_LIMIT slot in time slices (flows/lts_slices.py), not in a tagged task
    run per datablock (two concurrency API calls each), read from the task-run history of each job's runs."""
    tag = tomllib.loads(pipeline.limits_file.read_text())["LTS_TO_RETRIEVAL_LIMIT"]["tag"]
    pid = create_test_dataset_flow(num_files=20, file_size_mb=0.8)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    assert len(pipeline.scicat.get_datablocks(pid)) == 20
    whole = retrieve_datasets_flow(job_id=pipeline.new_job("retrieve", [pid]), return_state=True)
    files = [f"file_{i:04d}.bin" for i in range(0, 20, 2)]  # in 10 datablocks
    partial = retrieve_datasets_flow(job_id=pipeline.new_job("retrieve", [pid], files={pid: files}), return_state=True)
    assert whole.is_completed() and partial.is_completed(), (whole, partial)

    whole_runs, partial_runs = (tagged_task_runs_below(tag, s.state_details.flow_run_id) for s in (whole, partial))
    print(
        f"{tag} task runs: {len(whole_runs)} for 20 datablocks retrieved whole, "
        f"{len(partial_runs)} for 10 files of 10 datablocks"
    )
    # One slice each (LTS_TO_RETRIEVAL_LIMIT 1, 60 s slices); two if a slow machine takes over a minute.
    assert 1 <= len(whole_runs) <= 2 and 1 <= len(partial_runs) <= 2, [r.name for r in whole_runs + partial_runs]
    assert all(r.state.is_completed() for r in whole_runs + partial_runs)


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
