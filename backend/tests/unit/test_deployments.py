"""prefect.yaml, `archiver serve` and the job flows agree with the catalogue of config/deployments.py."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from archiver.config.deployments import (
    DATASET_FILES,
    DATASET_IDS,
    DEPLOYMENTS,
    JOB_ID,
    JOB_KINDS,
    PRUNING,
    RECOVERY,
    RETRIEVAL,
    RETRIEVAL_CLEANUP,
)
from archiver.flows.maintenance import PRUNE_SCHEDULE_CRON, RETRIEVAL_CLEANUP_CRON
from archiver.flows.serve import runner_deployments

REPO = Path(__file__).resolve().parents[3]


def prefect_yaml_deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def flow_of_entrypoint(entrypoint: str):
    """The flow object an entrypoint (`backend/archiver/....py:function`) names."""
    path, function = entrypoint.split(":")
    module = Path(path).relative_to("backend").with_suffix("").as_posix().replace("/", ".")
    return getattr(importlib.import_module(module), function)


def test_prefect_yaml_registers_the_catalogues_deployments_with_their_flows():
    registered = {(flow_of_entrypoint(d["entrypoint"]).name, name) for name, d in prefect_yaml_deployments().items()}
    assert registered == {(d.flow, d.name) for d in DEPLOYMENTS.values()}


def test_prefect_yaml_recovers_runs_of_every_job_flow_and_schedules_as_the_flows_say():
    deployments = prefect_yaml_deployments()
    [trigger] = deployments[RECOVERY.name]["triggers"]
    assert set(trigger["match_related"]["prefect.resource.name"]) == {k.deployment.flow for k in JOB_KINDS.values()}
    for deployment, cron in ((PRUNING, PRUNE_SCHEDULE_CRON), (RETRIEVAL_CLEANUP, RETRIEVAL_CLEANUP_CRON)):
        assert [s["cron"] for s in deployments[deployment.name]["schedules"]] == [cron]


def test_archiver_serve_serves_the_catalogues_deployments_job_kinds_tagged_by_their_noun():
    served = {(d.flow_name, d.name): d for d in runner_deployments()}
    assert set(served) == {(d.flow, d.name) for d in DEPLOYMENTS.values()}
    for kind in JOB_KINDS.values():
        assert served[kind.deployment.flow, kind.deployment.name].tags == [kind.noun]


@pytest.mark.parametrize("kind", JOB_KINDS.values(), ids=JOB_KINDS)
def test_each_job_flow_takes_the_parameters_the_api_sends(kind):
    entrypoint = prefect_yaml_deployments()[kind.deployment.name]["entrypoint"]
    parameters = inspect.signature(flow_of_entrypoint(entrypoint).fn).parameters
    sent = {JOB_ID, DATASET_IDS} | ({DATASET_FILES} if kind is RETRIEVAL else set())
    assert sent <= set(parameters)
    assert all(parameters[name].default is None for name in sent - {JOB_ID})
