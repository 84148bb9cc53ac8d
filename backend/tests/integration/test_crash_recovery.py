"""A job run killed mid-write is marked Crashed, recovered outside the dead process and resumed or reported.

Runs are served by `archiver serve`; the kill is SIGKILL of real processes while a datablock is being
written to the LTS (a `.partial` file exists; on the cold S3 store, an unfinished multipart upload). Windows are
short (heartbeat 30 s, the least Prefect allows; zombie window 50 s) so the tests take minutes, not hours.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from datetime import UTC, datetime

import pytest

from archiver.config.limits import load_limits_file
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.lts_tasks import verify_stored_datablock
from archiver.local_services import descendants, poll_until, signal_processes
from archiver.packing import archive, naming
from archiver.storage.posix_store import PosixLtsStore
from tests.integration.cold_lts import pipeline_store
from tests.integration.served import start_served_archival, wait_until_final

pytestmark = pytest.mark.integration

ZOMBIE_WINDOW_S = 50
# A datablock per file (1 MB target); files big enough that writing one takes a while.
NUM_FILES, FILE_SIZE_MB = 4, 24.0


def partial_files(pipeline, lts_backend=None) -> list:
    """Datablocks being written: `.partial` files in the LTS folder, or the cold store's unfinished uploads."""
    if lts_backend is None:
        return sorted(pipeline.lts_root.rglob(f"*{naming.PARTIAL_SUFFIX}"))
    uploads = pipeline.s3.list_multipart_uploads(Bucket=lts_backend[1]).get("Uploads", [])
    return sorted(upload["Key"] for upload in uploads)


def job_status(pipeline, job_id: str) -> str | None:
    return pipeline.scicat_dev.state()["jobs"][job_id].get("jobStatusMessage")


def finished_datablocks(pipeline, lts_backend=None) -> dict:
    """Datablocks under their final name, with (inode, mtime) to tell whether they were written again."""
    if lts_backend is None:
        tars = pipeline.lts_root.rglob(f"*{naming.TAR_SUFFIX}")
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tars}
    pages = pipeline.s3.get_paginator("list_objects_v2").paginate(Bucket=lts_backend[1])
    objects = [o for page in pages for o in page.get("Contents", []) if o["Key"].endswith(naming.TAR_SUFFIX)]
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in objects}


def kill_mid_write(pipeline, processes, after_finished: int = 0, lts_backend=None) -> float:
    """SIGKILL the processes `processes()` names while a datablock is half written (after `after_finished`
    datablocks are complete); returns when (monotonic)."""
    poll_until(
        lambda: (
            partial_files(pipeline, lts_backend) and len(finished_datablocks(pipeline, lts_backend)) >= after_finished
        ),
        timeout=180,
        interval=0.02,
        what="a datablock being written",
    )
    signal_processes(processes(), signal.SIGKILL)
    return time.monotonic()


def job_runs(client, job_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"archive-job-{job_id}"])))


def assert_nothing_left_running(pipeline, client, crashed_run, lts_backend=None) -> None:
    """No subflow or task run of the crashed run is still unfinished, no tag slot is taken, no half-written file."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    from archiver.flows.recovery import _descendant_flow_runs

    runs = [crashed_run, *_descendant_flow_runs(client, crashed_run.id)]
    assert len(runs) > 1  # the dataset's subflow run was there
    assert [r.name for r in runs if not client.read_flow_run(r.id).state.is_final()] == []
    task_runs = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in runs]))
    )
    assert [t.name for t in task_runs if not t.state.is_final()] == []
    for limit in load_limits_file(pipeline.limits_file).by_name().values():
        assert client.read_concurrency_limit_by_tag(limit.tag).active_slots == [], limit.tag
    assert partial_files(pipeline, lts_backend) == []


def finished_run_with_a_late_heartbeat(client, deployment_id):
    """A Completed run of the deployment, then a heartbeat of it with no final event after: the zombie
    automation's trigger fires for it too, as for a run whose Completed event it missed (seen after the
    Prefect server restarted). Returns the run and when the automation may have acted on it (monotonic)."""
    from prefect.events import Event
    from prefect.states import Completed

    run = client.create_flow_run_from_deployment(
        deployment_id,
        parameters={"job_id": "finished-before"},
        state=Completed(message="finished before the heartbeat"),
    )
    flow = client.read_flow(run.flow_id)
    event = Event(
        event="prefect.flow-run.heartbeat",
        id=uuid.uuid4(),
        occurred=datetime.now(UTC),
        resource={"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name},
        related=[
            {
                "prefect.resource.id": f"prefect.flow.{flow.id}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow.name,
            },
            {"prefect.resource.id": f"prefect.deployment.{deployment_id}", "prefect.resource.role": "deployment"},
        ],
    )
    client.request("POST", "/events", json=[event.model_dump(mode="json")]).raise_for_status()
    return run, time.monotonic() + ZOMBIE_WINDOW_S + 30


@pytest.fixture
def crash_pipeline(pipeline):
    pipeline.set_settings(
        ARCHIVER_ZOMBIE_WINDOW_S=ZOMBIE_WINDOW_S,
        ARCHIVER_HEARTBEAT_S=30,
        ARCHIVER_DATASET_CONCURRENCY=1,
        ARCHIVER_DATABLOCK_CONCURRENCY=1,
    )
    return pipeline


def test_lost_node_run_is_crashed_by_heartbeat_automation_and_resumed(crash_pipeline, lts_backend, serve_deployments):
    """Runner and flow-run process killed together (a lost node): only the missing heartbeats tell.
    With retries allowed, the job is started again on another runner, resumes and ends successful. On both
    LTS stores: the resumed run keeps the datablocks written before the kill and replaces the half-written one."""
    from prefect.client.orchestration import get_client

    pipeline = crash_pipeline
    pipeline.set_settings(ARCHIVER_CRASH_RETRIES=2)
    pid = create_test_dataset_flow(num_files=NUM_FILES, file_size_mb=FILE_SIZE_MB)
    originals = {f.path: f.chk for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list}
    job_id = pipeline.new_job("archive", [pid])
    node = serve_deployments()
    run = start_served_archival(job_id)

    killed_at = kill_mid_write(pipeline, lambda: [*descendants(node.pid), node.pid], 1, lts_backend)
    finished_before = finished_datablocks(pipeline, lts_backend)
    serve_deployments()  # another node, for the recovery and the resumed run
    with get_client(sync_client=True) as client:
        finished, acted_by = finished_run_with_a_late_heartbeat(client, run.deployment_id)
        poll_until(
            lambda: client.read_flow_run(run.id).state.is_crashed(),
            timeout=ZOMBIE_WINDOW_S + 60,
            interval=1,
            what="zombie automation to mark the run Crashed",
        )
        crashed_after = time.monotonic() - killed_at
        assert "no heartbeat" in client.read_flow_run(run.id).state.message
        retried = poll_until(
            lambda: [r for r in job_runs(client, job_id) if r.id != run.id],
            timeout=120,
            interval=1,
            what="the job started again",
        )
        assert len(retried) == 1 and "crash-retry:1" in retried[0].tags
        poll_until(
            lambda: job_status(pipeline, job_id) == "finishedSuccessful",
            timeout=300,
            interval=1,
            what="the resumed job to finish",
        )
        finished_after = time.monotonic() - killed_at
        print(
            f"\nlost node: Crashed {crashed_after:.0f} s after the kill; SciCat shows finishedSuccessful "
            f"{finished_after:.0f} s after the kill (resumed run included)"
        )
        assert_nothing_left_running(pipeline, client, run, lts_backend)
        # The automation may not turn a finished run into a crashed one (a job that succeeded shown Crashed).
        time.sleep(max(0.0, acted_by - time.monotonic()))
        assert [s.type.value for s in client.read_flow_run_states(finished.id)] == ["COMPLETED"]

    lifecycle = pipeline.scicat_dev.state()["datasets"][pid]["datasetlifecycle"]
    assert lifecycle["archiveStatusMessage"] == "datasetOnArchiveDisk"
    datablocks = pipeline.scicat.get_datablocks(pid)
    assert len({d.archive_id for d in datablocks}) == len(datablocks) == NUM_FILES
    archived, store = {}, pipeline_store(pipeline)
    for datablock in datablocks:  # verified against its manifest: read back, or by S3's stored checksum
        manifest = verify_stored_datablock(store, datablock.archive_id, file_timeout_s=10)
        archived.update({f.path: f.chk for f in manifest.dataFileList})
    assert archived == originals
    assert pipeline.landing_keys(pid) == []
    now = finished_datablocks(pipeline, lts_backend)
    assert (
        finished_before and {p: now.get(p) for p in finished_before} == finished_before
    )  # resumed: kept, not rewritten


def test_killed_run_without_retries_is_reported_failed(crash_pipeline, serve_deployments):
    """Only the flow-run process killed (a `docker kill` with the worker alive): the runner reports it Crashed,
    the recovery cleans up and, with no retries allowed, SciCat is told the job failed."""
    from prefect.client.orchestration import get_client

    pipeline = crash_pipeline
    pipeline.set_settings(ARCHIVER_CRASH_RETRIES=0)
    pid = create_test_dataset_flow(num_files=NUM_FILES, file_size_mb=FILE_SIZE_MB)
    landing_before = pipeline.landing_keys(pid)
    job_id = pipeline.new_job("archive", [pid])
    node = serve_deployments()
    run = start_served_archival(job_id)
    killed_at = kill_mid_write(pipeline, lambda: descendants(node.pid))
    poll_until(
        lambda: job_status(pipeline, job_id) == "finishedUnsuccessful",
        timeout=180,
        interval=1,
        what="the job reported failed",
    )
    print(
        f"\nkilled flow-run process: "
        f"SciCat shows finishedUnsuccessful {time.monotonic() - killed_at:.0f} s after the kill"
    )
    lifecycle = pipeline.scicat_dev.state()["datasets"][pid]["datasetlifecycle"]
    assert lifecycle["archiveStatusMessage"] == "scheduleArchiveJobFailed"
    assert "crashed" in lifecycle["archiveReturnMessage"]
    assert "retries exhausted (0 of ARCHIVER_CRASH_RETRIES=0)" in lifecycle["archiveReturnMessage"]
    assert pipeline.landing_keys(pid) == landing_before
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_crashed()
        assert [r.id for r in job_runs(client, job_id)] == [run.id]  # not started again
        assert_nothing_left_running(pipeline, client, client.read_flow_run(run.id))


def test_run_taken_for_dead_but_still_beating_is_left_to_finish(crash_pipeline, serve_deployments):
    """A live run marked Crashed for missing heartbeats (as after a Prefect server outage longer than the window)
    is set Running again once its heartbeats show it lives: neither started twice nor reported failed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling, Crashed

    from archiver.config.automations import ZOMBIE_MESSAGE_PREFIX

    pipeline = crash_pipeline
    pipeline.set_settings(ARCHIVER_CRASH_RETRIES=2)
    pid = create_test_dataset_flow(num_files=1, file_size_mb=0.1)
    job_id = pipeline.new_job("archive", [pid])
    serve_deployments(LTS_FREE_SPACE_PERCENTAGE="99.999")  # the run waits for free space until cancelled
    run = start_served_archival(job_id)
    with get_client(sync_client=True) as client:
        poll_until(
            lambda: (
                pipeline.scicat_dev.state()["datasets"][pid]["datasetlifecycle"].get("archiveStatusMessage")
                == "started"
            ),
            what="archival started",
        )
        client.set_flow_run_state(
            run.id, Crashed(message=f"{ZOMBIE_MESSAGE_PREFIX} {ZOMBIE_WINDOW_S} s: (test)"), force=True
        )
        poll_until(
            lambda: client.read_flow_run(run.id).state.is_running(),
            timeout=150,
            interval=1,
            what="the live run set Running again",
        )
        assert [r.id for r in job_runs(client, job_id)] == [run.id]
        assert job_status(pipeline, job_id) == "inProgress"

        client.set_flow_run_state(run.id, Cancelling(), force=True)  # end it; the cancellation hook reports
        poll_until(
            lambda: job_status(pipeline, job_id) == "finishedUnsuccessful",
            timeout=120,
            interval=1,
            what="the cancelled job reported",
        )


def test_a_live_run_taken_for_dead_whose_recovery_never_came_asks_for_it_and_finishes(
    crash_pipeline, serve_deployments
):
    """The zombie automation's Crashed event can be lost: a Prefect server restarted after a long outage marks
    its live runs Crashed at start, before its triggers service listens (test_prefect_outage.py). Here the
    recovery's trigger is paused instead. The live run, finding itself Crashed with no recovery asked for, asks
    for its own; the recovery sees its heartbeats and sets it Running, and the job finishes in that run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    from archiver.config.automations import ZOMBIE_MESSAGE_PREFIX
    from archiver.config.deployments import RECOVERY
    from archiver.flows.serve import deployment_triggers

    pipeline = crash_pipeline
    pipeline.set_settings(ARCHIVER_CRASH_RETRIES=2)
    pid = create_test_dataset_flow(num_files=NUM_FILES, file_size_mb=FILE_SIZE_MB)
    job_id = pipeline.new_job("archive", [pid])
    [trigger] = deployment_triggers(RECOVERY.name)
    with get_client(sync_client=True) as client:
        # Serving replaces the trigger an earlier test's runner registered: pause the one this runner makes.
        earlier = {automation.id for automation in client.read_automations_by_name(trigger.name)}
        serve_deployments()
        run = start_served_archival(job_id)
        triggers = poll_until(
            lambda: [a for a in client.read_automations_by_name(trigger.name) if a.id not in earlier],
            what="the recovery's trigger of this runner",
        )
        for automation in triggers:
            client.pause_automation(automation.id)
        assert [a.enabled for a in client.read_automations_by_name(trigger.name)] == [False]
        try:
            poll_until(lambda: finished_datablocks(pipeline), timeout=180, interval=0.05, what="a datablock written")
            client.set_flow_run_state(
                run.id, Crashed(message=f"{ZOMBIE_MESSAGE_PREFIX} {ZOMBIE_WINDOW_S} s: (test)"), force=True
            )
            poll_until(
                lambda: job_status(pipeline, job_id) == "finishedSuccessful",
                timeout=240,
                interval=1,
                what="the job to finish",
            )
        finally:
            for automation in triggers:
                with contextlib.suppress(ObjectNotFound):
                    client.resume_automation(automation.id)
        assert [r.id for r in job_runs(client, job_id)] == [run.id]  # not started a second time
        assert wait_until_final(run.id).state.is_completed()
        recoveries = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"recover-%{run.id}"))
        )
        assert [r.state.name for r in recoveries] == ["Completed"]
        history = [state.name for state in client.read_flow_run_states(run.id)]
        assert history[history.index("Crashed") + 1 :] == ["Running", "Completed"], history


def test_a_frozen_run_that_wakes_up_changes_nothing_and_the_resumed_job_finishes(crash_pipeline, serve_deployments):
    """The flow-run process frozen mid-write (SIGSTOP, as `docker pause`) past the zombie window: the run is
    marked Crashed and started again; the new run waits for the dataset's lock instead of failing. Woken up
    (SIGCONT), the old run sees it no longer owns the job and stops: no registration, no lifecycle or job
    status from it; the resumed run finishes and SciCat's job and dataset agree."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from tests.integration.task_history import most_at_once, tagged_task_runs_since

    pipeline = crash_pipeline
    pipeline.set_settings(ARCHIVER_CRASH_RETRIES=2, ARCHIVER_DATASET_LOCK_WAIT_S=600)
    pid = create_test_dataset_flow(num_files=NUM_FILES, file_size_mb=FILE_SIZE_MB)
    originals = {f.path: f.chk for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list}
    job_id = pipeline.new_job("archive", [pid])
    since = datetime.now(UTC)
    node = serve_deployments()
    run = start_served_archival(job_id)
    poll_until(
        lambda: partial_files(pipeline) and len(finished_datablocks(pipeline)) >= 1,
        timeout=180,
        interval=0.02,
        what="a datablock being written",
    )
    frozen = []
    try:
        frozen = signal_processes(descendants(node.pid), signal.SIGSTOP)
        assert frozen, "no flow-run process left to freeze"
        with get_client(sync_client=True) as client:
            poll_until(
                lambda: client.read_flow_run(run.id).state.is_crashed(),
                timeout=ZOMBIE_WINDOW_S + 60,
                interval=1,
                what="zombie automation to mark the frozen run Crashed",
            )
            retried = poll_until(
                lambda: [r for r in job_runs(client, job_id) if r.id != run.id and r.state and r.state.is_running()],
                timeout=180,
                interval=1,
                what="the job started again",
            )
            time.sleep(5)  # the new run is at the dataset's lock now
    finally:
        signal_processes(frozen, signal.SIGCONT)
    woken_at, woke = time.monotonic(), datetime.now(UTC)
    poll_until(
        lambda: job_status(pipeline, job_id) == "finishedSuccessful",
        timeout=300,
        interval=1,
        what="the resumed job to finish",
    )
    print(f"\nfrozen run woken up: SciCat shows finishedSuccessful {time.monotonic() - woken_at:.0f} s after")

    statuses = [
        e["body"].get("jobStatusMessage")
        for e in pipeline.scicat_dev.requests()
        if e.get("jobId") == job_id and e["method"] == "PATCH"
    ]
    assert "finishedUnsuccessful" not in statuses and statuses[-1] == "finishedSuccessful", statuses
    lifecycle = pipeline.scicat_dev.state()["datasets"][pid]["datasetlifecycle"]
    assert lifecycle["archiveStatusMessage"] == "datasetOnArchiveDisk"
    datablocks = pipeline.scicat.get_datablocks(pid)
    assert len({d.archive_id for d in datablocks}) == len(datablocks) == NUM_FILES
    archived, store = {}, PosixLtsStore(pipeline.lts_root)
    for datablock in datablocks:
        archived.update({f.path: f.chk for f in archive.verify_datablock(store, datablock.archive_id).dataFileList})
    assert archived == originals
    assert pipeline.landing_keys(pid) == [] and partial_files(pipeline) == []
    with get_client(sync_client=True) as client:
        old = client.read_flow_run(run.id)
        assert not old.state.is_completed(), old.state  # it stopped on waking: nothing of the job is its own
        assert len(retried) == 1 and client.read_flow_run(retried[0].id).state.is_completed()
    writes = tagged_task_runs_since("move-datablocks-to-lts", "write ", since)
    assert most_at_once([(w.start_time, w.end_time) for w in writes if w.start_time]) <= 1
    # Woken, the old run wrote no datablock (one it was writing when frozen may end; none may begin).
    with get_client(sync_client=True) as client:
        old_subflows = {
            r.id
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
            )
        }
    assert old_subflows, "the old run's dataset subflow is missing"
    assert [
        w.name
        for w in writes
        if w.flow_run_id in old_subflows and w.start_time and w.start_time > woke and w.state.is_completed()
    ] == []
