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
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.audit import lts_audit
from archiver.flows.maintenance import (
    PRUNE_SCHEDULE_CRON,
    RETRIEVAL_CLEANUP_CRON,
    clean_retrievals_flow,
    prune_discarded_flow,
)
from archiver.flows.recovery import recover_job
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.flows.test_dataset import create_test_dataset_flow

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


def serve_deployments(limit: int | None = None) -> None:
    """Block, running scheduled runs of the deployments (at most `limit` at once)."""
    settings = seeded_settings()
    for key, value in FLOW_RUN_ENVIRONMENT.items():  # flow-run subprocesses inherit it; set values win
        os.environ.setdefault(key, value)
    # to_deployment is typed sync-or-async; outside an event loop it is sync.
    deployments: list[Any] = [
        archive_datasets_flow.to_deployment(name="datasets_archival", tags=["archival"]),
        retrieve_datasets_flow.to_deployment(name="datasets_retrieval", tags=["retrieval"]),
        recover_job.to_deployment(name="job_recovery", triggers=deployment_triggers("job_recovery")),
        create_test_dataset_flow.to_deployment(name="dataset_creation"),
        prune_discarded_flow.to_deployment(name="discarded_pruning", cron=PRUNE_SCHEDULE_CRON),
        clean_retrievals_flow.to_deployment(name="retrieval_cleanup", cron=RETRIEVAL_CLEANUP_CRON),
        lts_audit.to_deployment(name="lts_auditing", cron=audit_cron(settings)),
    ]
    serve(
        *deployments,
        limit=limit,
        heartbeat_seconds=heartbeat_seconds(settings),
        print_starting_message=False,
    )
