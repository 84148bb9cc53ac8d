"""The `ha` profile (issue 30): two Prefect API replicas behind the proxy, one background-services
container, Redis; faults of each while an archive job writes.

The stack is the runbook of docs/deployment.md with the `ha` block added (.ha.env after the other env
files), brought up once for this module under a project name of its own, and reset at the end like the
default stack. Each fault hits a job of several datablocks while bytes move (watched on the LTS volume
from this machine, as test_faults.py does); afterwards the job must have a clear outcome in SciCat, the
datablocks finished before the fault must not have been written again, the tars must hold the uploaded
bytes, and nothing may be left running or holding a slot.

These tests bring up a second stack and take about five minutes (272 s on 2026-12-05): they run only with
ARCHIVER_HA_STACK=1 (docs/deployment.md, "High availability"), not in the default test command.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from archiver.storage.s3 import S3Credentials, s3_client
from tests.stack.conftest import ENV_FILES, VARS, Operator, runbook
from tests.stack.faults import (
    FILES,
    JOB_END_S,
    archive_mid_write,
    assert_archived_once,
    assert_nothing_left_running,
    docker,
    flow_run_container_id,
    iso,
    job_runs,
    poll,
    state_history,
    wait_job_finished,
)

HA_VARIABLE = "ARCHIVER_HA_STACK"
HA_ENV_FILE = ".ha.env"

pytestmark = [
    pytest.mark.stack,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(
        os.environ.get(HA_VARIABLE) != "1",
        reason=f"the `ha` profile's stack tests bring up a second stack: set {HA_VARIABLE}=1 to run them",
    ),
]

REPLICAS = ("prefect-api-1", "prefect-api-2")
HA_SERVICES = {*REPLICAS, "prefect-services", "redis"}
# docs/flows.md "When a run crashes": the worker reports a dead flow-run container within about 30 s;
# the recovery then starts the crash retry. With room for this 2-core machine, as test_faults.py.
WORKER_SEEN_BOUND_S = 90


def ha_runbook() -> list[str]:
    """The runbook's `up` lines with the `ha` block right after the line that sets COMPOSE_ENV_FILES."""
    lines = runbook("up")
    at = next(i for i, line in enumerate(lines) if line.startswith("export COMPOSE_ENV_FILES=")) + 1
    return lines[:at] + runbook("ha") + lines[at:]


@pytest.fixture(scope="session")
def ha_stack(tmp_path_factory, stack_runner):
    yield from stack_runner(tmp_path_factory, "archiver-hatest", ha_runbook(), (*ENV_FILES, HA_ENV_FILE))


@pytest.fixture(scope="module")
def ha_operator(ha_stack):
    """The Operator on the ha stack, with datablocks of at most 1 MB (one datablock per file)."""
    s3 = s3_client(
        ha_stack.s3_url,
        VARS.s3.region,
        S3Credentials(ha_stack.secret("miniouser.txt"), ha_stack.secret("miniopass.txt")),
    )
    ha_stack.set_variable("archiver_target_size_mb", 1)
    operator = Operator(ha_stack, s3)
    yield operator
    operator.scicat.close()
    ha_stack.set_variable("archiver_target_size_mb", VARS.archiver.target_size_mb)


def replicas_answering(stack, requests: int = 20) -> dict[str, int]:
    """Which replica answered each of `requests` API reads through the proxy (its X-Prefect-Replica header)."""
    answered: dict[str, int] = {}
    for _ in range(requests):
        replica = stack.prefect("POST", "/flow_runs/count", json={}).headers.get("X-Prefect-Replica", "none")
        answered[replica] = answered.get(replica, 0) + 1
    return answered


def redis_cli(stack, *args: str, authenticated: bool = True) -> subprocess.CompletedProcess:
    """`redis-cli ARGS` in the Redis container, with the password of its secret file (REDISCLI_AUTH, read there:
    it is on no command line) or without any."""
    container = stack.services()["redis"]["ID"]
    if not authenticated:
        return subprocess.run(["docker", "exec", container, "redis-cli", *args], capture_output=True, text=True)
    with_password = 'REDISCLI_AUTH="$(cat "$REDIS_PASSWORD_FILE")" exec redis-cli "$@"'
    return subprocess.run(
        ["docker", "exec", container, "sh", "-c", with_password, "redis-cli", *args], capture_output=True, text=True
    )


def redis_keys(stack) -> int:
    """Keys in Redis, both databases (messaging, leases: 0; Docket: 1), once Redis answers: a restarted Redis
    says LOADING while it reads its append-only file back."""

    def count() -> int | None:
        answers = [redis_cli(stack, "-n", db, "dbsize").stdout.strip() for db in ("0", "1")]
        return sum(int(answer) for answer in answers) if all(a.isdigit() for a in answers) else None

    return poll(lambda: count() is not None, 60, "Redis answering after its start", interval=0.5) and count()


def triggers_view(stack, run_id: str) -> list[str]:
    """What Prefect's triggers service has made of the run's state-change events, read from Redis."""
    lines = []
    states = stack.prefect("GET", "/flow_run_states/", params={"flow_run_id": run_id}).json()
    parked = redis_cli(stack, "zrange", "triggers:waitlist", "0", "-1").stdout.split()
    for state in sorted(states, key=lambda s: s["timestamp"]):
        seen = redis_cli(stack, "exists", f"triggers:seen:{state['id']}").stdout.strip() == "1"
        lines.append(
            f"state {state['timestamp']} {state['name']}: event {'seen' if seen else 'NOT seen'} by the triggers"
            + (", parked waiting for the event it follows" if state["id"] in parked else "")
        )
    dead_letters = redis_cli(stack, "scard", "dlq").stdout.strip()
    lines.append(f"triggers waitlist: {len(parked)} event(s); dead letters: {dead_letters}")
    for stream in ("events", "actions"):
        groups = redis_cli(stack, "xinfo", "groups", stream).stdout.split()
        lines.append(f"consumer groups of {stream}: {' '.join(groups)}")
    return lines


def control_plane_report(stack, run_id: str, since: datetime) -> str:
    """For a failure message: which step between the run's Crashed state and its crash retry did not happen.

    Prefect's triggers service evaluates a state-change event only after the event it `follows` (the run's
    previous state, prefect_redis.ordering); one it has not seen parks the later ones for 15 minutes. So: each
    of the run's states and whether the triggers have seen its event (`triggers:seen:<state id>` in Redis)
    or parked it (waitlist); the consumer groups' lag and pending messages and the dead-letter queue; the
    automation events since `since` (triggered, action executed or failed); the recovery runs; and the last
    log lines of the services, Redis and the replicas."""
    recoveries = stack.prefect(
        "POST", "/flow_runs/filter", json={"flow_runs": {"name": {"like_": f"recover-%{run_id}"}}}
    ).json()
    lines = [f"recovery runs: {[(r['name'], r['state_name']) for r in recoveries]}"]
    try:
        lines += triggers_view(stack, run_id)
    except Exception as error:  # only a failure message: say why this part is missing
        lines.append(f"triggers' view: {error}")
    try:
        events = stack.prefect(
            "POST",
            "/events/filter",
            json={"filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 20},
        ).json()
        lines += [f"event {e['occurred']} {e['event']}" for e in events.get("events", [])]
        automation_events = stack.prefect(
            "POST",
            "/events/filter",
            json={
                "filter": {"event": {"prefix": ["prefect.automation"]}, "occurred": {"since": since.isoformat()}},
                "limit": 50,
            },
        ).json()
        lines += [
            f"event {e['occurred']} {e['event']} {e['resource'].get('prefect.resource.name')}"
            for e in automation_events.get("events", [])
        ]
    except Exception as error:  # only a failure message: say why the events are missing
        lines.append(f"events: {error}")
    for service in ("prefect-services", "redis", *REPLICAS):
        logs = stack.compose("logs", "--no-color", "--tail", "40", service, check=False)
        lines += [f"--- {service}", (logs.stdout + logs.stderr)[-6000:]]
    return "\n".join(lines)


def bring_back(stack) -> None:
    """Every service of the stack running and healthy again (a stopped replica started)."""
    stack.compose("up", "-d", "--wait")


# --- the tests ---


def test_the_ha_profile_replaces_the_single_server_and_clients_go_through_the_proxy(ha_stack, ha_operator):
    stack = ha_stack
    services = stack.services()
    assert "prefect-server" not in services, "the single server runs beside the replicas"
    unhealthy = {
        name: services.get(name, {}).get("Status")
        for name in HA_SERVICES
        if "(healthy)" not in services.get(name, {}).get("Status", "")
    }
    assert unhealthy == {}
    assert services["prefect-migrate"]["State"] == "exited" and services["prefect-migrate"]["ExitCode"] == 0
    published = {
        name for name, entry in services.items() for p in entry.get("Publishers") or [] if p.get("PublishedPort")
    }
    assert published == {"proxy", "minio", "scicat", "prometheus"}, "Redis or a replica publishes a port"

    pid = ha_operator.ingest_dataset(2, 1024 * 1024)
    job, started = ha_operator.create_job("archive", [pid])
    run = ha_operator.wait(started, timeout_s=JOB_END_S)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    ha_operator.assert_archived(pid, job["id"])

    # The flow run reached Prefect through the proxy, and the proxy spreads requests over both replicas.
    environment = stack.flow_run_container(run)["Config"]["Env"]
    assert "PREFECT_API_URL=http://proxy:80/prefect-ui/api" in environment
    answered = replicas_answering(stack)
    stack.note(f"ha: which replica answered 20 API reads through the proxy: {answered}")
    assert set(answered) == {f"{replica}:4200" for replica in REPLICAS}, answered


def test_redis_refuses_clients_without_its_password_which_nothing_shows(ha_stack):
    """Redis requires the password of redispass.txt (every Prefect container of the profile is healthy, so they
    give it); the value is in no container's configuration, in no log and not in `docker compose config`."""
    stack = ha_stack
    for db in ("0", "1"):
        refused = redis_cli(stack, "-n", db, "ping", authenticated=False)
        assert "NOAUTH" in refused.stdout + refused.stderr, (refused.stdout, refused.stderr)
        assert redis_cli(stack, "-n", db, "ping").stdout.strip() == "PONG"
    wrong = redis_cli(
        stack, "--user", "default", "--pass", "not-the-password", "--no-auth-warning", "ping", authenticated=False
    )
    assert "WRONGPASS" in wrong.stdout + wrong.stderr, (wrong.stdout, wrong.stderr)

    password = stack.secret("redispass.txt")
    services = stack.services()
    unhealthy = {name: services[name]["Status"] for name in HA_SERVICES if "(healthy)" not in services[name]["Status"]}
    assert unhealthy == {}, "a container of the profile does not reach Redis with the password"
    inspected = json.loads(docker("inspect", *[entry["ID"] for entry in services.values()]))
    for container in inspected:
        configuration = json.dumps([container["Config"]["Env"], container["Config"]["Cmd"], container["Args"]])
        assert password not in configuration, f"Redis's password is in {container['Name']}'s configuration"
    assert password not in stack.compose("config").stdout
    logs = stack.compose("logs", "--no-color", check=False)
    assert password not in logs.stdout + logs.stderr, "Redis's password is in a container's log"


def test_an_api_replica_killed_mid_write_the_archive_finishes_without_rewriting(ha_stack, ha_operator):
    stack = ha_stack
    pid, job_id, run_id, before = archive_mid_write(ha_operator)
    killed = stack.services()["prefect-api-1"]["ID"]
    docker("kill", killed)
    killed_at = time.monotonic()
    killed_wall = datetime.now(UTC)
    try:
        run = stack.wait_for_flow_run(run_id, timeout_s=JOB_END_S)
        stack.record_timing("ha: API replica killed mid-write, kill to job end", time.monotonic() - killed_at)
        stack.note(f"ha: API replica killed mid-write, the run's states: {state_history(stack, run_id)}")
        assert docker("inspect", "-f", "{{.State.Running}}", killed) == "false", "the killed replica came back"
    finally:
        bring_back(stack)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert [r["id"] for r in job_runs(stack, "archive", job_id)] == [run_id]  # finished by itself, not resumed
    assert_archived_once(ha_operator, pid, job_id, before)
    assert len(before) < FILES, "every datablock was written before the kill: not mid-write"
    assert iso(run["end_time"]) > killed_wall, "the run ended before the replica was killed: not mid-job"
    assert_nothing_left_running(stack, [run_id])


def test_redis_restarted_mid_write_the_job_ends_clearly_and_keeps_its_data(ha_stack, ha_operator):
    """Redis carries the events, the LTS slots' leases and the services' Docket: restarted mid-write, it comes
    back with its data (append-only file), and the job finishes, by itself or resumed by the recovery."""
    stack = ha_stack
    pid, job_id, run_id, before = archive_mid_write(ha_operator)
    keys_before = redis_keys(stack)
    restarted_at = time.monotonic()
    stack.compose("restart", "redis")
    keys_after = redis_keys(stack)
    bring_back(stack)
    stack.record_timing(
        "ha: Redis restart mid-write, until the stack is healthy again", time.monotonic() - restarted_at
    )

    status = wait_job_finished(ha_operator, job_id)
    runs = job_runs(stack, "archive", job_id)
    stack.record_timing("ha: Redis restart mid-write, restart to job end in SciCat", time.monotonic() - restarted_at)
    stack.note(
        f"ha: Redis restart mid-write: {len(runs)} run(s), states {[state_history(stack, r['id']) for r in runs]}; "
        f"Redis keys {keys_before} before, {keys_after} right after the restart"
    )
    assert keys_after > 0, "Redis came back empty: no persistence"
    assert status == "finishedSuccessful", stack.flow_run_failure(
        stack.prefect("GET", f"/flow_runs/{runs[-1]['id']}").json()
    )
    assert_archived_once(ha_operator, pid, job_id, before)
    assert len(before) < FILES, "every datablock was written before the restart: not mid-write"
    assert_nothing_left_running(stack, [r["id"] for r in runs])


def test_services_restarted_mid_write_then_a_killed_run_is_still_resumed(ha_stack, ha_operator):
    """The background services (scheduler, late runs, automations) restarted while a job writes: the job
    finishes; then a flow-run container killed mid-write is still marked Crashed and resumed by the
    recovery the automation starts, a run left Scheduled past its time is still marked Late, and the
    scheduler still makes the runs of a scheduled deployment."""
    stack = ha_stack
    pid, job_id, run_id, before = archive_mid_write(ha_operator)
    restarted_at = time.monotonic()
    stack.compose("restart", "prefect-services")
    bring_back(stack)
    run = stack.wait_for_flow_run(run_id, timeout_s=JOB_END_S)
    stack.record_timing("ha: services restart mid-write, restart to job end", time.monotonic() - restarted_at)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert_archived_once(ha_operator, pid, job_id, before)

    # The automation and recovery after the restart: a killed run is resumed without a human.
    pid, job_id, run_id, before = archive_mid_write(ha_operator)
    docker("kill", flow_run_container_id(stack, run_id))
    killed_at = time.monotonic()
    killed_wall = datetime.now(UTC)
    poll(
        lambda: stack.prefect("GET", f"/flow_runs/{run_id}").json()["state_type"] == "CRASHED",
        120,
        "Crashed state of the killed run",
    )
    try:
        retry = poll(lambda: job_runs(stack, "archive", job_id)[1:], 180, "crash retry of the job")[0]
    except AssertionError as error:
        raise AssertionError(f"{error}\n{control_plane_report(stack, run_id, killed_wall)}") from None
    retried_s = time.monotonic() - killed_at
    assert "crash-retry:1" in retry["tags"]
    assert wait_job_finished(ha_operator, job_id) == "finishedSuccessful"
    stack.note(f"ha: after a services restart, a killed run's crash retry started {retried_s:.0f}s after the kill")
    assert retried_s <= WORKER_SEEN_BOUND_S
    assert_archived_once(ha_operator, pid, job_id, before)
    assert_nothing_left_running(stack, [r["id"] for r in job_runs(stack, "archive", job_id)])

    # The late-runs service: a run Scheduled a minute ago on a pool no worker serves is marked Late.
    flow = stack.prefect("POST", "/flows/", json={"name": "ha-late-runs-probe"}).json()
    late = stack.prefect(
        "POST",
        "/flow_runs/",
        json={
            "flow_id": flow["id"],
            "name": f"ha-late-probe-{int(time.time())}",
            "state": {
                "type": "SCHEDULED",
                "name": "Scheduled",
                "state_details": {"scheduled_time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
            },
        },
    ).json()
    poll(
        lambda: stack.prefect("GET", f"/flow_runs/{late['id']}").json()["state_name"] == "Late",
        120,
        "Late state of a run scheduled a minute ago",
    )
    stack.prefect("POST", f"/flow_runs/{late['id']}/set_state", json={"state": {"type": "CANCELLED"}, "force": True})

    # The scheduler: the scheduled runs of a deployment with a schedule, deleted, are scheduled again.
    deployment = stack.prefect("GET", f"/deployments/name/{SCHEDULED_DEPLOYMENT}").json()
    assert scheduled_runs(stack, deployment["id"]), "the scheduler made no runs of a scheduled deployment"
    for run in scheduled_runs(stack, deployment["id"]):
        stack.prefect("DELETE", f"/flow_runs/{run['id']}")
    deleted_at = time.monotonic()
    poll(lambda: scheduled_runs(stack, deployment["id"]), 180, f"runs of {SCHEDULED_DEPLOYMENT} scheduled again")
    stack.note(
        f"ha: after a services restart, deleted scheduled runs made again {time.monotonic() - deleted_at:.0f}s later"
    )


SCHEDULED_DEPLOYMENT = "prune_discarded/discarded_pruning"  # daily (prefect.yaml)


def scheduled_runs(stack, deployment_id: str) -> list[dict]:
    return stack.prefect(
        "POST",
        "/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["SCHEDULED"]}}}},
    ).json()
