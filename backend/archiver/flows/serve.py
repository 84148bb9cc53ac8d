"""Serve the deployments from this process: the local, Docker-less way to run the pipeline.

The compose stack registers the same deployments on Docker work pools from
`prefect.yaml`; here a Prefect runner executes their runs as local subprocesses.
The recovery deployment's trigger is read from `prefect.yaml`, so both ways
create the same automation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import serve

from archiver.clients.outage import FLOW_RUN_ENVIRONMENT
from archiver.config.deployments import ARCHIVAL, AUDIT, PRUNING, RECOVERY, RETRIEVAL, RETRIEVAL_CLEANUP, TEST_DATASET
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.audit import lts_audit
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.maintenance import (
    PRUNE_SCHEDULE_CRON,
    RETRIEVAL_CLEANUP_CRON,
    clean_retrievals_flow,
    prune_discarded_flow,
)
from archiver.flows.recovery import recover_job
from archiver.flows.retrieve import retrieve_datasets_flow

PREFECT_YAML = Path(__file__).resolve().parents[3] / "prefect.yaml"
DEFAULT_HEARTBEAT_S = 30


def deployment_triggers(name: str, prefect_yaml: Path = PREFECT_YAML) -> list:
    """The triggers of deployment `name` in prefect.yaml, as Prefect's deploy command reads them."""
    import yaml
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    deployments = yaml.safe_load(prefect_yaml.read_text()).get("deployments", [])
    [spec] = [d for d in deployments if d.get("name") == name] or [None]
    if spec is None:
        raise ValueError(f"{prefect_yaml}: no deployment named {name!r}")
    return [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in spec.get("triggers", [])]


def seeded_settings():
    """The settings `archiver config` seeded (environment first); None before seeding."""
    from archiver.config.errors import ConfigError
    from archiver.config.runtime import load_run_configuration

    try:
        return load_run_configuration().settings
    except ConfigError:
        return None


def heartbeat_seconds(settings=None) -> int:
    """ARCHIVER_HEARTBEAT_S as seeded; the default before seeding."""
    return settings.archiver.heartbeat_s if settings else DEFAULT_HEARTBEAT_S


def audit_cron(settings=None) -> str:
    """LTS_AUDIT_CRON as seeded; the default before seeding."""
    from archiver.config.settings import LtsSection

    return settings.lts.audit_cron if settings else LtsSection.model_fields["audit_cron"].default


def runner_deployments(settings=None) -> list[Any]:
    """The deployments of config.deployments, as this process serves them (`settings`: as seeded, or None)."""
    # to_deployment is typed sync-or-async; outside an event loop it is sync.
    return [
        archive_datasets_flow.to_deployment(name=ARCHIVAL.deployment.name, tags=[ARCHIVAL.noun]),
        retrieve_datasets_flow.to_deployment(name=RETRIEVAL.deployment.name, tags=[RETRIEVAL.noun]),
        recover_job.to_deployment(name=RECOVERY.name, triggers=deployment_triggers(RECOVERY.name)),
        create_test_dataset_flow.to_deployment(name=TEST_DATASET.name),
        prune_discarded_flow.to_deployment(name=PRUNING.name, cron=PRUNE_SCHEDULE_CRON),
        clean_retrievals_flow.to_deployment(name=RETRIEVAL_CLEANUP.name, cron=RETRIEVAL_CLEANUP_CRON),
        lts_audit.to_deployment(name=AUDIT.name, cron=audit_cron(settings)),
    ]


def serve_deployments(limit: int | None = None) -> None:
    """Block, running scheduled runs of the deployments (at most `limit` at once)."""
    settings = seeded_settings()
    for key, value in FLOW_RUN_ENVIRONMENT.items():  # flow-run subprocesses inherit it; set values win
        os.environ.setdefault(key, value)
    serve(
        *runner_deployments(settings),
        limit=limit,
        heartbeat_seconds=heartbeat_seconds(settings),
        print_starting_message=False,
    )
