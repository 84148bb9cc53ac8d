"""The Prefect automation that finds flow runs whose process died: Prefect's own zombie-run recipe.

A flow run sends a `prefect.flow-run.heartbeat` event every ARCHIVER_HEARTBEAT_S
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY) from a thread of the process running it. When,
after a heartbeat, neither another heartbeat nor a final state arrives within
ARCHIVER_ZOMBIE_WINDOW_S, the process is gone (container killed, node lost) and the
automation marks the run Crashed. That state change is what the recovery
deployment's trigger (prefect.yaml, `job_recovery`) reacts to.
"""

from __future__ import annotations

from datetime import timedelta

from archiver.config.deployments import ARCHIVAL, RECOVERY, RETRIEVAL, TEST_DATASET
from archiver.config.settings import Settings

ZOMBIE_AUTOMATION = "archiver: crash flow runs without heartbeat"
ZOMBIE_MESSAGE_PREFIX = "no heartbeat for"

# Runs of these flows' deployments only: they get ARCHIVER_HEARTBEAT_S, while any other flow run sends
# Prefect's default heartbeat (every 180 s) and would be taken for dead. Subflow runs (datasets) have no
# deployment; the recovery marks them.
WATCHED_FLOWS = [ARCHIVAL.deployment.flow, RETRIEVAL.deployment.flow, RECOVERY.flow, TEST_DATASET.flow]
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}


def zombie_automation(settings: Settings):
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    window = settings.archiver.zombie_window_s
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"Seeded by `archiver config`: a flow run without a heartbeat for {window} s is marked "
            "Crashed (its process is gone); the job_recovery deployment then recovers job runs."
        ),
        enabled=True,
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "deployment"},
                {"prefect.resource.role": "flow", "prefect.resource.name": WATCHED_FLOWS},
            ],
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        # Not forced: Prefect then refuses to turn a run that is already final into Crashed. The trigger
        # also fires for a run whose final-state event it missed (seen across a Prefect server restart),
        # and a forced change showed such a Completed job run as Crashed.
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                force=False,
                message=f"{ZOMBIE_MESSAGE_PREFIX} {window} s: "
                "the process running the flow is gone (killed, out of memory, node lost)",
            )
        ],
    )
