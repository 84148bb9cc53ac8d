"""The compose stack from the outside: as an operator and SciCat see it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from archiver.clients.outage import FLOW_RUN_ENVIRONMENT
from archiver.config.limits import load_limits_file
from archiver.config.secrets import MINIO_ROOT, OBSOLETE_SECRET_BLOCKS, PREFECT_SECRETS, SECRETS
from archiver.config.settings import flat_values, load_vars_file, variable_name
from tests.browser import browser_page, page_text, prefect_ui, screenshot

REPO = Path(__file__).resolve().parents[3]
LONG_RUNNING = (
    "postgres",
    "prefect-server",
    "proxy",
    "minio",
    "archiver-api",
    "scicat",
    "prefect-archival-worker",
    "prefect-retrieval-worker",
    "archiver-metrics",
    "prometheus",
)
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]

HOST_SERVICE_PORTS = {5432, 3306, 6379, 5672, 1883, 4222}
POOL_TEMPLATES = {
    "archival-docker-pool": "prefect-jobtemplate-dev.json",
    "retrieval-docker-pool": "prefect-jobtemplate-dev.json",
}
DEPLOYMENTS = {
    "archive_datasetlist/datasets_archival": "archival-docker-pool",
    "retrieve_datasetlist/datasets_retrieval": "retrieval-docker-pool",
    "recover_job/job_recovery": "archival-docker-pool",
    "create_test_dataset/dataset_creation": "archival-docker-pool",
    "prune_discarded/discarded_pruning": "archival-docker-pool",
    "lts_audit/lts_auditing": "archival-docker-pool",
}


def test_every_long_running_service_is_running_and_healthy(stack):
    services = stack.services()
    for name in LONG_RUNNING:
        assert name in services, f"{name} has no container; services: {sorted(services)}"
        assert services[name]["State"] == "running", f"{name}: {services[name]['State']}"
        assert services[name]["Health"] == "healthy", f"{name}: health {services[name]['Health']!r}"


def test_the_default_stack_runs_the_single_server_and_nothing_of_the_ha_profile(stack):
    """Without .ha.env: one prefect-server, the clients on it directly, no replica, services container or Redis."""
    services = stack.services()
    ha_only = {"prefect-api-1", "prefect-api-2", "prefect-services", "prefect-migrate", "redis"}
    assert ha_only & set(services) == set()
    assert ha_only & stack.enabled_services() == set()
    worker = stack.services()["prefect-archival-worker"]["ID"]
    environment = json.loads(subprocess.run(["docker", "inspect", worker], capture_output=True, text=True).stdout)
    assert "PREFECT_API_URL=http://prefect-server:4200/prefect-ui/api" in environment[0]["Config"]["Env"]


def test_only_intended_ports_are_published_and_only_on_loopback(stack):
    published = [
        (name, publisher)
        for name, entry in stack.services().items()
        for publisher in entry.get("Publishers") or []
        if publisher.get("PublishedPort")
    ]
    assert {name for name, _ in published} == {"proxy", "minio", "scicat", "prometheus"}
    for name, publisher in published:
        assert publisher["URL"] == "127.0.0.1", f"{name} publishes on {publisher['URL']}"
        assert publisher["PublishedPort"] not in HOST_SERVICE_PORTS


def test_prefect_config_one_shot_succeeded(stack):
    result = stack.one_shots["prefect-config"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "archiver config:" in result.stdout


def test_prefect_config_run_again_changes_nothing(stack):
    """The runbook's promise that the one-shot can be run again (after a failure, or to apply a change)."""
    first = stack.one_shots["prefect-config"]
    again = stack.compose("run", "--rm", "prefect-config", check=False)
    assert first.returncode == 0 and again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout


def test_prefect_has_the_variables_of_prefect_vars_toml_with_the_development_overrides(stack):
    expected = {
        variable_name(key): value for key, value in flat_values(load_vars_file(REPO / "prefect-vars.toml")).items()
    }
    # .development.env: flow runs report to the stack's SciCat; download URLs work from this machine.
    expected["scicat_endpoint"] = "http://scicat:3000"
    expected["s3_external_endpoint"] = stack.s3_url
    stored = {v["name"]: v["value"] for v in stack.prefect("POST", "/variables/filter", json={}).json()}
    assert {name: stored.get(name) for name in expected} == expected


def test_prefect_has_the_secret_blocks_with_the_secret_files_values(stack):
    documents = stack.prefect(
        "POST",
        "/block_documents/filter",
        json={"block_types": {"slug": {"any_": ["secret"]}}, "include_secrets": True},
    ).json()
    stored = {d["name"]: d["data"]["value"] for d in documents}
    for spec in PREFECT_SECRETS:
        assert spec.block in stored, f"secret block {spec.block} missing"
        assert stored[spec.block] == (stack.secrets_dir / spec.filename).read_text().strip(), spec.block
    assert not set(OBSOLETE_SECRET_BLOCKS) & set(stored)
    assert stack.secret(MINIO_ROOT.password.filename) not in stored.values()  # the root account stays out of Prefect


def test_prefect_has_the_concurrency_limits_of_concurrency_limits_toml(stack):
    expected = {
        limit.tag: limit.limit for limit in load_limits_file(REPO / "concurrency-limits.toml").by_name().values()
    }
    stored = {
        c["tag"]: c["concurrency_limit"] for c in stack.prefect("POST", "/concurrency_limits/filter", json={}).json()
    }
    assert {tag: stored.get(tag) for tag in expected} == expected


def test_no_secret_value_is_in_any_container_environment(stack):
    values = [(stack.secrets_dir / spec.filename).read_text().strip() for spec in SECRETS]
    container_ids = [entry["ID"] for entry in stack.services().values()]
    inspected = json.loads(
        subprocess.run(["docker", "inspect", *container_ids], capture_output=True, text=True, check=True).stdout
    )
    for container in inspected:
        environment = "\n".join(container["Config"]["Env"] or []) + " ".join(container["Config"]["Cmd"] or [])
        assert not [v for v in values if v in environment], f"a secret value is in {container['Name']}'s environment"


def _pool(stack, name: str) -> dict:
    return stack.prefect("GET", f"/work_pools/{name}").json()


def test_both_work_pools_exist_with_an_online_worker_and_the_configured_template(stack):
    for pool, template_file in POOL_TEMPLATES.items():
        assert _pool(stack, pool)["base_job_template"] == json.loads((REPO / template_file).read_text())
        workers = stack.prefect("POST", f"/work_pools/{pool}/workers/filter", json={}).json()
        assert any(w["status"] == "ONLINE" for w in workers), f"{pool}: no online worker in {workers}"
        assert _pool(stack, pool)["status"] == "READY"


def test_a_restarted_worker_puts_the_configured_template_back_on_its_existing_pool(stack):
    pool = "retrieval-docker-pool"
    changed = json.loads((REPO / POOL_TEMPLATES[pool]).read_text())
    changed["variables"]["properties"]["volumes"]["default"] = ["somewhere-else:/tmp/LTS"]
    stack.prefect("PATCH", f"/work_pools/{pool}", json={"base_job_template": changed})
    assert _pool(stack, pool)["base_job_template"] == changed

    stack.compose("restart", "prefect-retrieval-worker")
    stack.compose("up", "-d", "--wait", "prefect-retrieval-worker")

    assert _pool(stack, pool)["base_job_template"] == json.loads((REPO / POOL_TEMPLATES[pool]).read_text())


# What anyone reaching port 80 could do before the server required authentication.
UNAUTHENTICATED_PREFECT_CALLS = (
    ("POST", "/block_documents/filter", {"include_secrets": True}),
    ("POST", "/variables/filter", {}),
    ("PATCH", "/variables/name/lts_storage_root", {"value": "/elsewhere"}),
    ("POST", "/flow_runs/filter", {}),
    ("GET", "/csrf-token?client=attacker", None),
)


def test_the_prefect_api_refuses_every_request_without_the_auth_string_through_the_proxy(stack):
    for method, path, body in UNAUTHENTICATED_PREFECT_CALLS:
        for auth in (None, ("archiver", "wrong"), ("", "")):
            response = httpx.request(method, f"{stack.prefect_api}{path}", json=body, auth=auth, timeout=30)
            assert response.status_code == 401, (
                f"{method} {path} with {auth}: {response.status_code} {response.text[:300]}"
            )
    assert stack.prefect("GET", "/variables/name/lts_storage_root").json()["value"] == stack.lts_root
    # The probe stays open: compose's healthcheck and a load balancer need no secret.
    assert httpx.get(f"{stack.prefect_api}/health", timeout=30).status_code == 200


def test_the_prefect_ui_asks_for_the_login_and_then_renders_the_dashboard_through_the_proxy(stack, tmp_path):
    ui = f"{stack.base_url}/prefect-ui"
    with browser_page() as page:
        page.goto(f"{ui}/dashboard")
        page.wait_for_url("**/prefect-ui/login**")
        screenshot(page, tmp_path, "prefect-login")
    with prefect_ui(ui, stack.secret("prefectauth.txt")) as page:
        text = page_text(page, f"{ui}/dashboard", ["Dashboard", "Flow Runs"])
        screenshot(page, tmp_path, "prefect-dashboard")
        assert "Flow Runs" in text, text[:2000]
        assert not re.search(r"\b(error|failed to fetch|not found|authentication failed)\b", text, flags=re.I), text[
            :2000
        ]

        # The work-pools page lists what the UI fetched from /prefect-ui/api through the proxy.
        text = page_text(page, f"{ui}/work-pools", list(POOL_TEMPLATES))
        for pool in POOL_TEMPLATES:
            assert pool in text, text[:2000]


def test_the_flows_deployment_one_shot_registers_the_deployments(stack):
    result = stack.one_shots["prefect-flows-deployment"]
    assert result.returncode == 0, result.stdout + result.stderr
    deployments = _deployments_by_flow_name(stack)
    for name, pool in DEPLOYMENTS.items():
        assert name in deployments, f"{name} not registered; have {sorted(deployments)}"
        variables = deployments[name]["job_variables"]
        assert deployments[name]["work_pool_name"] == pool
        assert variables["image"] == stack.env["ARCHIVER_IMAGE"]
        assert variables["image_pull_policy"] == "Never"
        assert variables["networks"] == [stack.env["STACK_NETWORK"]]
        assert variables["volumes"] == [
            f"{stack.env['LTS_VOLUME_NAME']}:{load_vars_file(REPO / 'prefect-vars.toml').lts.storage_root}"
        ]
        heartbeat = load_vars_file(REPO / "prefect-vars.toml").archiver.heartbeat_s
        assert variables["env"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat), **FLOW_RUN_ENVIRONMENT}


def _deployments_by_flow_name(stack) -> dict[str, dict]:
    flows = {f["id"]: f["name"] for f in stack.prefect("POST", "/flows/filter", json={}).json()}
    return {
        f"{flows[d['flow_id']]}/{d['name']}": d for d in stack.prefect("POST", "/deployments/filter", json={}).json()
    }


def test_the_archiver_api_answers_behind_the_proxy_under_its_root_path(stack):
    assert httpx.get(f"{stack.base_url}/api/v1/health/livez", timeout=10).json() == {"status": "ok"}
    # The proxy passes the prefix through: the API's own routes answer, its readiness included.
    ready = httpx.get(f"{stack.base_url}/api/v1/health/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert httpx.get(f"{stack.base_url}/api/v1/openapi.json", timeout=10).json()["info"]["title"] == "archiver API"
    assert httpx.post(f"{stack.base_url}/api/v1/jobs", json={}, timeout=10).status_code == 401
    assert httpx.get(f"{stack.base_url}/health/livez", timeout=10).status_code == 404


def test_the_scicat_development_server_is_published_and_logs_in_the_seeded_account(stack):
    assert httpx.get(f"{stack.scicat_url}/dev/health", timeout=10).json() == {"ok": True}
    stored = {
        d["name"]: d["data"]["value"]
        for d in stack.prefect(
            "POST",
            "/block_documents/filter",
            json={"block_types": {"slug": {"any_": ["secret"]}}, "include_secrets": True},
        ).json()
    }
    login = httpx.post(
        f"{stack.scicat_url}/api/v3/auth/login",
        timeout=10,
        json={"username": stored["scicat-user"], "password": stored["scicat-password"]},
    )
    assert login.status_code == 201, login.text
