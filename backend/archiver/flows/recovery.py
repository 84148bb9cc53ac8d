"""Recovery of a job run that crashed or was cancelled: the `recover_job` flow.

A killed container runs no hook, so the recovery runs elsewhere: the
`job_recovery` deployment's trigger (prefect.yaml) starts it when a run of
archive_datasetlist or retrieve_datasetlist enters Crashed or Cancelled (a
worker or runner reports a dead process as Crashed; when they are gone too, the
zombie automation seeded by `archiver config` does, after ARCHIVER_ZOMBIE_WINDOW_S).

It marks what the dead run left Running as Crashed (subflow runs, task runs),
releases their tag slots, removes half-written files of the run's datasets, and
then either starts the job again (a crash, fewer than ARCHIVER_CRASH_RETRIES
retries so far: the new run resumes) or finishes the job as failed in SciCat.
Attempts are counted by a `crash-retry:<n>` tag on each automatic re-run.
"""

from __future__ import annotations

import time
from uuid import UUID

from prefect import flow
from prefect.logging import get_run_logger

from archiver.clients.connections import Connections, connect
from archiver.clients.outage import retry_refused_connections
from archiver.config.automations import ZOMBIE_MESSAGE_PREFIX
from archiver.config.deployments import DATASET_IDS, JOB_ID, RECOVERY
from archiver.config.runtime import RunConfiguration, load_run_configuration
from archiver.flows.archive import ARCHIVAL_HOOKS
from archiver.flows.concurrency import reconcile_tags
from archiver.flows.jobs import JobHooks, checked_pids, finish_interrupted_job
from archiver.flows.retrieve import RETRIEVAL_HOOKS

retry_refused_connections()  # before this flow run makes a Prefect client (clients/outage.py)

JOB_HOOKS = {hooks.kind.deployment.flow: hooks for hooks in (ARCHIVAL_HOOKS, RETRIEVAL_HOOKS)}
RETRY_TAG = "crash-retry:"
# A cancelled run's own hook reports the job; the recovery waits this long for it before doing it itself.
CANCEL_HOOK_GRACE_S = 60
# A run taken for dead for want of heartbeats gets one more heartbeat interval and this much to show it lives.
HEARTBEAT_GRACE_S = 15
FLOW_RUN_RESOURCE = "prefect.flow-run."


def crash_retries_so_far(tags: list[str]) -> int:
    counts = [
        int(tag.removeprefix(RETRY_TAG))
        for tag in tags
        if tag.startswith(RETRY_TAG) and tag.removeprefix(RETRY_TAG).isdigit()
    ]
    return max(counts, default=0)


def _flow_run_id(value: str) -> UUID:
    """The id of a flow run given as itself or as its event resource id (`prefect.flow-run.<id>`)."""
    try:
        return UUID(value.removeprefix(FLOW_RUN_RESOURCE))
    except ValueError:
        raise ValueError(
            f"flow_run_id {value!r} is not a flow run id (a UUID, optionally prefixed {FLOW_RUN_RESOURCE!r})"
        ) from None


def _descendant_flow_runs(client, flow_run_id: UUID) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    found, parents = [], [flow_run_id]
    while parents:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents))
        )
        found += children
        parents = [child.id for child in children]
    return found


def crash_leftovers(client, flow_run, reason: str) -> set[str]:
    """Mark the unfinished subflow runs and task runs of a dead run Crashed; returns the task runs' tags."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.states import Crashed

    log = get_run_logger()
    runs = [flow_run, *_descendant_flow_runs(client, flow_run.id)]
    for run in runs[1:]:
        if run.state is None or not run.state.is_final():
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            log.info("subflow run %s marked Crashed", run.name)
    tags: set[str] = set()
    task_runs = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id for run in runs]))
    )
    for task_run in task_runs:
        if task_run.state is None or not task_run.state.is_final():
            client.set_task_run_state(task_run.id, Crashed(message=reason), force=True)
            tags.update(task_run.tags)
            log.info("task run %s marked Crashed", task_run.name)
    return tags


def remove_storage_leftovers(
    hooks: JobHooks, pids: list[str], config: RunConfiguration, connections: Connections, log
) -> None:
    """What a dead run of the job left half done on storage, dataset by dataset (each only under the dataset's
    lock, so a live run's files and uploads stay)."""
    for pid in pids:
        hooks.remove_leftovers(pid, config, connections, log)


def heartbeats_since(client, flow_run_id: UUID, since) -> int:
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    return client.read_events(
        EventFilter(
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"{FLOW_RUN_RESOURCE}{flow_run_id}"]),
        ),
        limit=1,
    ).total


def set_running_again(client, flow_run_id: UUID) -> None:
    from prefect.states import Running

    client.set_flow_run_state(
        flow_run_id, Running(message="heartbeats resumed after it was marked Crashed"), force=True
    )


def still_alive(client, flow_run, heartbeat_s: int) -> bool:
    """Whether a run the zombie automation marked Crashed still sends heartbeats, e.g. after the Prefect
    server was unreachable for longer than the window: it is then set Running again and left alone."""
    state = flow_run.state
    if not (state.message or "").startswith(ZOMBIE_MESSAGE_PREFIX):
        return False  # reported by a worker or runner that saw the process exit
    elapsed = time.time() - state.timestamp.timestamp()
    time.sleep(max(0.0, heartbeat_s + HEARTBEAT_GRACE_S - elapsed))
    if not heartbeats_since(client, flow_run.id, state.timestamp):
        return False
    set_running_again(client, flow_run.id)
    get_run_logger().warning(
        "flow run %s was marked Crashed for missing heartbeats but still sends them: set "
        "Running again and left to finish its job",
        flow_run.name,
    )
    return True


def _wait_for_cancellation_hook(connections: Connections, job_id: str) -> bool:
    deadline = time.monotonic() + CANCEL_HOOK_GRACE_S
    while time.monotonic() < deadline:
        if connections.scicat.get_job(job_id).is_finished:
            return True
        time.sleep(5)
    return False


def _retry(client, flow_run, attempt: int) -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    tags = [tag for tag in flow_run.tags if not tag.startswith(RETRY_TAG)] + [f"{RETRY_TAG}{attempt}"]
    retry: FlowRun = run_deployment(  # type: ignore[assignment]  # typed sync-or-async; sync in a flow
        flow_run.deployment_id,
        parameters=flow_run.parameters,
        job_variables=flow_run.job_variables or None,
        tags=tags,
        idempotency_key=f"{flow_run.id}-crash-retry",
        timeout=0,
        as_subflow=False,
    )
    get_run_logger().warning(
        "flow run %s crashed: started %s (crash retry %d) to resume the job", flow_run.name, retry.name, attempt
    )


@flow(name=RECOVERY.flow, flow_run_name="recover-{flow_run_id}")
def recover_job(flow_run_id: str) -> str:
    """Clean up after a crashed or cancelled job run, then resume the job or report it failed.
    Returns what was done: "retried", "reported", "nothing to report" or "still alive"."""
    from prefect.client.orchestration import get_client

    log = get_run_logger()
    config = load_run_configuration()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(_flow_run_id(flow_run_id))
        state = flow_run.state
        if state is None or not (state.is_crashed() or state.is_cancelled()):
            log.info(
                "flow run %s is %s now (retried by hand?): nothing to recover",
                flow_run.name,
                state.name if state else "without state",
            )
            return "nothing to report"
        flow_name = client.read_flow(flow_run.flow_id).name
        hooks = JOB_HOOKS.get(flow_name)
        if hooks is None:
            raise ValueError(
                f"flow run {flow_run.name} is a run of {flow_name!r}, not of a job flow "
                f"({', '.join(JOB_HOOKS)}); check the job_recovery trigger in prefect.yaml"
            )
        if state.is_crashed() and still_alive(client, flow_run, config.settings.archiver.heartbeat_s):
            return "still alive"
        state_name = str(state.name).lower()
        what = f"{hooks.kind.noun} run {flow_run.name} {state_name}"
        reason = (
            f"{what} (its process or container died: killed, out of memory or node lost)"
            if state.is_crashed()
            else what
        )
        tags = crash_leftovers(client, flow_run, f"the job run {flow_run.name} is {state_name}")
        for result in reconcile_tags(tags | {limit.tag for limit in config.limits.by_name().values()}):
            if result.released:
                log.info("tag %s: released %d slot(s) of dead task runs", result.tag, result.released)

        job_id, dataset_ids = flow_run.parameters[JOB_ID], flow_run.parameters.get(DATASET_IDS)
        with connect(config) as connections:
            pids, _ = checked_pids(dataset_ids or connections.scicat.get_job_dataset_pids(job_id))
            remove_storage_leftovers(hooks, pids, config, connections, log)
            if state.is_cancelled() and _wait_for_cancellation_hook(connections, job_id):
                log.info("job %s: reported by the cancellation hook", job_id)
                return "nothing to report"
            if connections.scicat.get_job(job_id).is_finished:
                log.info("job %s: already finished in SciCat (the run died after reporting)", job_id)
                return "nothing to report"
            retries = crash_retries_so_far(flow_run.tags)
            allowed = config.settings.archiver.crash_retries
            if state.is_crashed() and flow_run.deployment_id and retries < allowed:
                _retry(client, flow_run, retries + 1)
                return "retried"
            if state.is_crashed():
                reason += f"; retries exhausted ({retries} of ARCHIVER_CRASH_RETRIES={allowed})"
            finish_interrupted_job(hooks, job_id, dataset_ids, reason, config, connections, log)
            return "reported"
