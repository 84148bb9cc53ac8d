"""The Kubernetes work-pool job template (backend/docker/kubernetes/archiver-job-template.json) against the
pinned prefect-kubernetes worker: no cluster here, so the template is rendered for a flow run as the worker
would and the Job manifest checked. docs/deployment.md, "Workers on Kubernetes"."""

import asyncio
import json
import tomllib
import uuid
from pathlib import Path

import jsonschema
import pytest

prefect_kubernetes = pytest.importorskip("prefect_kubernetes.worker")

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = json.loads((REPO / "backend/docker/kubernetes/archiver-job-template.json").read_text())
LTS_ROOT = tomllib.loads((REPO / "prefect-vars.toml").read_text())["lts"]["LTS_STORAGE_ROOT"]


def job_manifest(values: dict) -> dict:
    """The Job the worker would create for a flow run with these job variables."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

    # The template refers to no block or variable, so this client (of no server) is never called.
    unused = PrefectClient("http://127.0.0.1:9/api")
    configuration = asyncio.run(
        prefect_kubernetes.KubernetesWorkerJobConfiguration.from_template_and_values(TEMPLATE, values, client=unused)
    )
    flow_run = FlowRun(id=uuid.uuid4(), name="calm-otter", flow_id=uuid.uuid4())
    configuration.prepare_for_flow_run(flow_run)
    return configuration.job_manifest


def test_every_variable_of_prefects_own_template_is_kept_and_the_schema_is_valid():
    default = prefect_kubernetes.KubernetesWorker.get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(TEMPLATE["variables"]["properties"])
    jsonschema.Draft202012Validator.check_schema(TEMPLATE["variables"])


def test_the_flow_run_pod_mounts_the_lts_claim_where_the_settings_say_and_is_never_retried_by_kubernetes():
    manifest = job_manifest({"image": "registry.example.org/archiver-runtime:1.4", "env": {"EXTRA": "1"}})
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example.org/archiver-runtime:1.4"
    assert container["volumeMounts"] == [{"name": "lts", "mountPath": LTS_ROOT}]
    assert pod["volumes"] == [{"name": "lts", "persistentVolumeClaim": {"claimName": "archiver-lts"}}]
    assert pod["restartPolicy"] == "Never"
    assert manifest["spec"]["backoffLimit"] == 0
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EXTRA"] == "1" and "PREFECT__FLOW_RUN_ID" in env


def test_a_kubernetes_retry_of_a_flow_run_is_refused():
    with pytest.raises(jsonschema.ValidationError, match="backoff"):
        jsonschema.validate({"backoff_limit": 2}, {**TEMPLATE["variables"], "required": []})
