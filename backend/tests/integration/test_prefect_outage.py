"""A Prefect server killed and restarted while an archive job writes datablocks: the job finishes.

The outage outlasts a heartbeat interval plus the zombie window, so the restarted server's zombie automation
may mark the live job run Crashed at once; its recovery (asked for by the run itself when the trigger missed the
Crashed event, as it does at a server's start) then finds it alive and sets it Running again.

The test runs its own Prefect server (own PostgreSQL database, fixed port) so that it can kill it
without disturbing the session's; the job runs under `archiver serve`, as flow runs do without Docker.
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest

from archiver import local_services
from archiver.config.automations import ZOMBIE_MESSAGE_PREFIX
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.packing import naming
from archiver.packing.archive import verify_datablock
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout
from tests.integration.own_prefect import RestartableServer, prefect_api

pytestmark = pytest.mark.integration

HEARTBEAT_S, ZOMBIE_WINDOW_S = 30, 35
OUTAGE_S = float(os.environ.get("ARCHIVER_TEST_OUTAGE_S", HEARTBEAT_S + ZOMBIE_WINDOW_S))


def tars(pipeline, pid: str) -> dict[str, tuple[int, int]]:
    """Datablock tar name -> (inode, mtime in ns) of what is under its final name now."""
    found = {}
    for path in lts_layout.datablocks_folder(pipeline.lts_root, pid).glob("*" + naming.TAR_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            found[path.name] = (stat.st_ino, stat.st_mtime_ns)
    return found


def test_prefect_server_killed_mid_write_does_not_fail_the_job(pipeline, own_prefect, serve_deployments, tmp_path):
    from prefect.deployments import run_deployment

    with prefect_api(own_prefect.api_url):
        # Variables, secret blocks, tag limits and the zombie automation into this test's server.
        pipeline.set_settings(ARCHIVER_HEARTBEAT_S=HEARTBEAT_S, ARCHIVER_ZOMBIE_WINDOW_S=ZOMBIE_WINDOW_S)
        pid = create_test_dataset_flow(num_files=24, file_size_mb=0.5)  # one datablock per file (1 MB target)
        originals = {f.path: f.chk for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list}
        landing = pipeline.landing_keys(pid)
        job_id = pipeline.new_job("archive", [pid])
        serve_deployments(PREFECT_API_URL=own_prefect.api_url)
        local_services.poll_until(
            lambda: _deployment_exists("archive_datasetlist/datasets_archival"),
            120,
            "the archival deployment to be served",
        )
        flow_run = run_deployment("archive_datasetlist/datasets_archival", parameters={"job_id": job_id}, timeout=0)

        before = local_services.poll_until(lambda: tars(pipeline, pid), 240, "the first datablock", interval=0.1)
        own_prefect.kill()
        killed_at = time.time()
        time.sleep(OUTAGE_S)
        assert pipeline.landing_keys(pid) == landing
        own_prefect.start()
        restarted_at = time.time()
        at_restart = tars(pipeline, pid)
        assert pipeline.landing_keys(pid) == landing  # nothing deleted before the job is done

        try:  # well inside pytest's 600 s, so that a stuck job fails with what it was doing
            status = local_services.poll_until(
                lambda: _final_job_status(pipeline, job_id), 300, "the job to finish", interval=1
            )
        except AssertionError as stuck:
            raise AssertionError(f"{stuck}\n{_what_the_run_was_doing(own_prefect, tmp_path)}") from None
        # The job's status is reported before the run's own final state: give that a moment.
        state = local_services.poll_until(lambda: _final_state(flow_run.id), 60, "the flow run's final state")
        # Whether the zombie automation fired depends on which the restarted server sees first, a fresh heartbeat
        # or its first evaluation (3 of 4 runs on 2026-12-04); the run's recovery without a trigger is tested in
        # test_crash_recovery.py.
        taken_for_dead = [m for m in _states_named(flow_run.id, "Crashed") if m.startswith(ZOMBIE_MESSAGE_PREFIX)]

    assert status == "finishedSuccessful", pipeline.scicat_dev.state()["jobs"][job_id]
    assert state.is_completed(), state
    assert 0 < len(before) < 24  # the outage began mid-write ...
    after = tars(pipeline, pid)
    # A write slice holds its LTS slot across datablocks (flows/lts_slices.py): writing needs no Prefect call
    # per datablock and may go on through the outage; what it needs of Prefect afterwards waits for it.
    during_outage = [name for name in at_restart if name not in before]
    written_after_outage = [name for name in after if name not in at_restart]
    assert len(before) + len(during_outage) + len(written_after_outage) == len(after) == 24, sorted(after)
    for name, identity in before.items():  # ... and what was on the LTS then was kept, not rewritten
        assert after[name] == identity, f"{name} was rewritten after the outage"
    lifecycle = pipeline.scicat_dev.state()["datasets"][pid]["datasetlifecycle"]
    assert lifecycle["archiveStatusMessage"] == "datasetOnArchiveDisk"
    datablocks = pipeline.scicat.get_datablocks(pid)
    assert sorted(lts_layout.datablock_path(pipeline.lts_root, d.archive_id).name for d in datablocks) == sorted(after)
    archived = {}
    for datablock in datablocks:
        manifest = verify_datablock(PosixLtsStore(pipeline.lts_root), datablock.archive_id)
        archived.update({f.path: f.chk for f in manifest.dataFileList})
    assert archived == originals
    assert pipeline.landing_keys(pid) == []
    assert not list(pipeline.lts_root.rglob("*" + naming.PARTIAL_SUFFIX))
    assert not (lts_layout.dataset_folder(pipeline.lts_root, pid) / "discarded").exists()
    print(
        f"outage {killed_at:.0f}..{restarted_at:.0f}; {len(before)} datablock(s) before, {len(during_outage)} "
        f"during, {len(written_after_outage)} after; taken for dead: {bool(taken_for_dead)}"
    )


def _what_the_run_was_doing(server: RestartableServer, tmp_path, lines: int = 80) -> str:
    """Every flow run and every unfinished task run as the restarted server has them (it serves only this test),
    and the ends of the runner's and the server's logs."""
    from prefect.client.orchestration import get_client

    def named(run) -> str:
        return f"{run.name}: {run.state.name if run.state else None}"

    with get_client(sync_client=True) as client:
        report = [f"flow run {named(run)}" for run in client.read_flow_runs()]
        report += [f"task run {named(t)}" for t in client.read_task_runs() if not (t.state and t.state.is_final())]
    for log in (tmp_path / "serve.log", server.log_path):
        report += [f"--- last {lines} lines of {log}", local_services.log_tail(log, lines)]
    return "\n".join(report)


def _states_named(flow_run_id, name: str) -> list[str]:
    """The messages of the run's states called `name`, in its history."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [s.message or "" for s in client.read_flow_run_states(flow_run_id) if s.name == name]


def _final_state(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state if state.is_final() else None


def _deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except ObjectNotFound:
            return False


def _final_job_status(pipeline, job_id: str) -> str | None:
    status = pipeline.scicat_dev.state()["jobs"][job_id].get("jobStatusMessage")
    return status if status and status.startswith("finished") else None
