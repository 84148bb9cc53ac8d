"""Stale tag-concurrency slots left by a flow run killed hard are released by `archiver limits reconcile`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archiver.local_services import descendants, poll_until

pytestmark = pytest.mark.integration

HOLDER_FLOW = textwrap.dedent(
    """
    import sys, time
    from prefect import flow, task

    @task(tags=[sys.argv[1]])
    def hold_lts_slot():
        time.sleep(600)

    @flow(name="hold-slot")
    def hold_slot():
        hold_lts_slot()

    if __name__ == "__main__":
        hold_slot.serve(name=sys.argv[1])
    """
)


def test_slot_of_a_killed_flow_run_is_released(tmp_path, prefect_api_url, unique_name):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from archiver.flows.concurrency import reconcile_tags

    tag = f"lts-test-{unique_name}"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER_FLOW)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)

    runner = subprocess.Popen(
        [sys.executable, str(script), tag],
        env={**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=(tmp_path / "runner.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with get_client(sync_client=True) as client:
            poll_until(lambda: _deployment_exists(client, f"hold-slot/{tag}"), what="served deployment")
            run = run_deployment(f"hold-slot/{tag}", timeout=0)
            poll_until(lambda: client.read_concurrency_limit_by_tag(tag).active_slots, what="slot taken")

            # While its holder lives, the slot is kept.
            [live] = reconcile_tags([tag])
            assert (live.released, live.kept) == (0, 1)

            flow_run_processes = poll_until(lambda: descendants(runner.pid), what="flow-run process")
            for pid in flow_run_processes:
                os.kill(pid, signal.SIGKILL)
            poll_until(lambda: client.read_flow_run(run.id).state.is_final(), what="flow run marked crashed")
            assert client.read_flow_run(run.id).state.type.value == "CRASHED"
            assert len(client.read_concurrency_limit_by_tag(tag).active_slots) == 1  # the leak

            [result] = reconcile_tags([tag])
            assert (result.released, result.kept) == (1, 0)
            assert client.read_concurrency_limit_by_tag(tag).active_slots == []
            assert client.read_global_concurrency_limit_by_name(f"tag:{tag}").active_slots == 0

            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "archiver.cli",
                    "limits",
                    "reconcile",
                    "--limits",
                    str(Path(__file__).resolve().parents[3] / "concurrency-limits.toml"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "PREFECT_API_URL": prefect_api_url},
            )
            assert cli.returncode == 0, cli.stderr
            assert "tag move-datablocks-to-lts: released 0 stale slot(s)" in cli.stdout
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        runner.wait(30)


def _deployment_exists(client, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False
