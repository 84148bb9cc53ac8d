"""The archiver API over HTTP, against a real Prefect server with the deployments registered."""

from __future__ import annotations

import json
import sys
import time
import uuid

import httpx
import pytest

from archiver import local_services
from archiver.config.secrets import read_secret, secret_spec

pytestmark = pytest.mark.integration
ROOT = "/api/v1"
AUTH_SPEC = secret_spec("ARCHIVER_API_AUTH_FILE")


@pytest.fixture(scope="module")
def deployments(prefect_api_url):
    """Archival and retrieval deployments (on a process pool no worker serves, so runs stay scheduled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    suffix = uuid.uuid4().hex[:8]
    names = {}
    with get_client(sync_client=True) as client:
        pool = f"api-test-pool-{suffix}"
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for job_type, flow_name in (("archive", "archive_datasetlist"), ("retrieve", "retrieve_datasetlist")):
            flow_id = client.create_flow_from_name(flow_name)
            deployment = f"api-test-{job_type}-{suffix}"
            client.create_deployment(flow_id=flow_id, name=deployment, work_pool_name=pool)
            names[job_type] = f"{flow_name}/{deployment}"
    return names


def start_api(tmp_path, secrets_dir, prefect_url: str, deployments: dict[str, str], **environment: str):
    port = local_services.free_port()
    return local_services.service(
        "archiver API",
        [sys.executable, "-m", "archiver.cli", "api", "--port", str(port)],
        f"http://127.0.0.1:{port}",
        f"{ROOT}/health/livez",
        tmp_path / "api.log",
        env={
            "PREFECT_API_URL": prefect_url,
            "API_ROOT_PATH": ROOT,
            "ARCHIVER_SECRETS_DIR": str(secrets_dir),
            "ARCHIVAL_DEPLOYMENT": deployments["archive"],
            "RETRIEVAL_DEPLOYMENT": deployments["retrieve"],
            "PREFECT_CLIENT_MAX_RETRIES": "1",
            **environment,
        },
        timeout=60,
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory, prefect_api_url, deployments):
    tmp = tmp_path_factory.mktemp("api")
    secrets = tmp / "secrets"
    from archiver.config.secrets import init_secrets

    init_secrets(secrets)
    with start_api(tmp, secrets, prefect_api_url, deployments) as server:
        client = httpx.Client(
            base_url=server.url + ROOT,
            headers={"Authorization": read_secret(AUTH_SPEC, secrets, {})},
            timeout=60,
        )
        client.log_path = server.log_path
        client.server = server
        client.secrets_dir = secrets
        yield client


def read_run(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


@pytest.mark.parametrize(
    ("content_type", "shape"),
    [("application/json", "v4"), ("text/plain;charset=UTF-8", "v4"), (None, "v3")],
)
def test_archive_job_starts_a_run_of_the_archival_deployment(api, deployments, content_type, shape):
    """SciCat's url job action sends text/plain unless a Content-Type is configured; v3 jobs list datasets on top."""
    job_id = str(uuid.uuid4())
    pids = ["20.500.11935/abc-1", "20.500.11935/abc-2"]
    datasets = [{"pid": p, "files": []} for p in pids]
    job = {
        "id": job_id,
        "type": "archive",
        "ownerGroup": "group1",
        **({"jobParams": {"datasetList": datasets}} if shape == "v4" else {"datasetList": datasets}),
    }
    headers = {"Content-Type": content_type} if content_type else {}
    response = api.post("/jobs", content=json.dumps(job).encode(), headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    run = read_run(body["uuid"])
    assert run.name == body["name"] and job_id in run.name
    assert run.parameters == {"job_id": job_id, "dataset_ids": pids}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(run.deployment_id)
    assert f"{'archive_datasetlist'}/{deployment.name}" == deployments["archive"]


def test_retrieve_job_without_dataset_list_leaves_the_lookup_to_the_flow(api):
    job_id = str(uuid.uuid4())
    response = api.post("/jobs", json={"id": job_id, "type": "retrieve"})
    assert response.status_code == 200, response.text
    assert read_run(response.json()["uuid"]).parameters == {"job_id": job_id}


def test_same_job_posted_again_returns_the_same_run(api):
    job = {"id": str(uuid.uuid4()), "type": "archive"}
    first = api.post("/jobs", json=job).json()
    second = api.post("/jobs", json=job).json()
    assert first == second
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"scicat-job:{job['id']}"]))
        )
    assert [r.id for r in runs] == [uuid.UUID(first["uuid"])]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), ({"Authorization": "Bearer not-the-token"}, "wrong")],
)
def test_missing_or_wrong_authorization_is_401_and_starts_nothing(api, headers, reason):
    job_id = str(uuid.uuid4())
    response = httpx.post(f"{api.base_url}jobs", json={"id": job_id, "type": "archive"}, headers=headers)
    assert response.status_code == 401
    log = api.log_path.read_text()
    assert f"{reason} Authorization header" in log
    assert "not-the-token" not in log
    assert api.headers["Authorization"].split()[-1] not in log


def test_unknown_type_is_400_naming_allowed_types(api):
    response = api.post("/jobs", json={"id": str(uuid.uuid4()), "type": "delete"})
    assert response.status_code == 400
    assert "'delete'" in response.text and "archive, retrieve" in response.text


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "not JSON"),
        (b'{"type": "archive"}', "id"),
        (b'{"id": "12345", "type": "archive"}', "UUID"),
        (b"[]", "not an object"),
        (b"\xff\xfe", "not JSON"),
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_malformed_job_is_422_saying_why(api, content, says, content_type):
    response = api.post("/jobs", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert says in response.text


def test_health(api):
    assert api.get("/health/livez").json() == {"status": "ok"}
    ready = httpx.get(f"{api.base_url}health/readyz")  # no Authorization needed
    assert ready.status_code == 200, ready.text


def test_openapi_document_lists_the_jobs_endpoint(api):
    document = api.get("/openapi.json").json()
    assert f"{ROOT}/jobs" in document["paths"]


def post_archive_job(server, secrets_dir, timeout: float) -> httpx.Response:
    """A new archive job, with the right Authorization header, to an API started by `start_api`."""
    auth = {"Authorization": read_secret(AUTH_SPEC, secrets_dir, {})}
    return httpx.post(
        f"{server.url}{ROOT}/jobs", json={"id": str(uuid.uuid4()), "type": "archive"}, headers=auth, timeout=timeout
    )


def test_unregistered_deployment_is_503_and_not_ready(tmp_path, secrets_dir, prefect_api_url):
    missing = {"archive": "archive_datasetlist/not-registered", "retrieve": "retrieve_datasetlist/not-registered"}
    with start_api(tmp_path, secrets_dir, prefect_api_url, missing) as server:
        response = post_archive_job(server, secrets_dir, timeout=60)
        assert response.status_code == 503
        assert "not registered" in response.json()["detail"]
        ready = httpx.get(f"{server.url}{ROOT}/health/readyz", timeout=60)
        assert ready.status_code == 503 and "archive_datasetlist/not-registered" in ready.json()["problems"]


def test_unreachable_prefect_is_503(tmp_path, secrets_dir, deployments):
    dead = f"http://127.0.0.1:{local_services.free_port()}/api"
    with start_api(tmp_path, secrets_dir, dead, deployments) as server:
        started = time.monotonic()
        response = post_archive_job(server, secrets_dir, timeout=120)
        assert response.status_code == 503
        assert "Prefect API unreachable" in response.json()["detail"]
        assert time.monotonic() - started < 35  # retries bounded by API_PREFECT_MAX_RETRIES / API_PREFECT_TIMEOUT_S
        assert httpx.get(f"{server.url}{ROOT}/health/readyz", timeout=120).status_code == 503


def test_prefect_refusing_the_api_credentials_is_502_naming_the_setting(
    tmp_path, secrets_dir, prefect_api_url, deployments
):
    from prefect.client.orchestration import get_client

    wrong = tmp_path / "prefectauth.txt"
    wrong.write_text("archiver:wrong-password\n")
    with get_client(sync_client=True) as client:
        runs_before = client.count_flow_runs()
    with start_api(
        tmp_path,
        secrets_dir,
        prefect_api_url,
        deployments,
        PREFECT_API_AUTH_STRING="",
        PREFECT_API_AUTH_STRING_FILE=str(wrong),
    ) as server:
        response = post_archive_job(server, secrets_dir, timeout=60)
    assert response.status_code == 502, response.text
    assert (
        "Prefect refused the archiver API's credentials (HTTP 401); check PREFECT_API_AUTH_STRING_FILE"
        in (response.json()["detail"])
    )
    assert "wrong-password" not in response.text + (tmp_path / "api.log").read_text()
    with get_client(sync_client=True) as client:
        assert client.count_flow_runs() == runs_before


def test_job_created_in_scicat_starts_an_archival_run_through_the_api(api, tmp_path):
    """SciCat's job action (the development server's) calls the API with its Authorization header."""
    from archiver.config.settings import ScicatSection
    from archiver.scicat.client import ScicatClient, ScicatCredentials
    from archiver.scicat.models import new_raw_dataset

    with local_services.scicat_dev_server(api.secrets_dir, tmp_path, archiver_url=f"{api.base_url}jobs") as scicat:
        credentials = ScicatCredentials.from_secret_files(api.secrets_dir, environ={})
        with ScicatClient(ScicatSection(endpoint=scicat.url), credentials) as client:
            pid = client.create_dataset(new_raw_dataset("e2e", "API test dataset")).pid
            job = client.create_job("archive", [pid])
        log = httpx.get(f"{scicat.url}/dev/requests").json()
    [creation] = [entry for entry in log if entry["method"] == "POST" and entry["path"].endswith("/jobs")]
    assert creation["forward"]["status"] == 200, creation["forward"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as prefect:
        [run] = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"scicat-job:{job.id}"]))
        )
        deployment = prefect.read_deployment(run.deployment_id)
    assert run.parameters == {"job_id": job.id, "dataset_ids": [pid]}
    assert deployment.name.startswith("api-test-archive-")
