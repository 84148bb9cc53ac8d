"""The archiver API against hostile and broken input: refused cheaply, with a 4xx naming the problem, never a 500,
and never a flow run. The API runs as its own process against the session's real Prefect server."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from test_api import ROOT, api, deployments, start_api  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def runs_of_jobs(job_ids: list[str]) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(any_=[f"scicat-job:{j}" for j in job_ids]))
        )


def job(pids: list | None = None, **fields) -> dict:
    document = {"id": str(uuid.uuid4()), "type": "archive", **fields}
    if pids is not None:
        document["jobParams"] = {"datasetList": [{"pid": p, "files": []} for p in pids]}
    return document


def rss_kib(pid: int) -> dict[str, int]:
    """Resident set size now and at its peak (kB, from /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def zeros(total: int, chunk: int = MiB):
    """A body produced while it is sent: the test never holds it."""
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sent += size
        yield b"0" * size


def test_unauthenticated_100_mib_body_is_401_without_the_api_growing(api):
    pid = api.server.process.pid
    before = rss_kib(pid)
    response = httpx.post(f"{api.base_url}jobs", content=zeros(100 * MiB), timeout=120)
    after = rss_kib(pid)
    print(
        f"API RSS before {before['VmRSS']} kB (peak {before['VmHWM']} kB), "
        f"after an unauthenticated 100 MiB body {after['VmRSS']} kB (peak {after['VmHWM']} kB)"
    )
    assert response.status_code == 401
    assert after["VmRSS"] - before["VmRSS"] < 16 * 1024
    assert after["VmHWM"] - before["VmHWM"] < 16 * 1024


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_authenticated_body_over_the_limit_is_413_naming_the_setting(api, declared):
    document = json.dumps(job(["20.500.11935/x"] * 3)).encode()
    padding = b" " * (MiB + 10)  # valid JSON, only too big
    if declared:
        response = api.post("/jobs", content=document + padding)
    else:
        response = api.post("/jobs", content=iter([document, padding]))
    assert response.status_code == 413, response.text
    assert "API_MAX_BODY_BYTES" in response.text and str(MiB) in response.text
    assert runs_of_jobs([json.loads(document)["id"]]) == []


@pytest.mark.parametrize("content", [b"{not json", b"\x00" * 100, b'{"id": "x", "type": "archive"}'])
def test_unauthenticated_malformed_body_is_401_not_422(api, content):
    response = httpx.post(f"{api.base_url}jobs", content=content, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401, response.text


BAD_PIDS = [
    ("20.500.11935/abc\x00def", r"'20.500.11935/abc\x00def'"),
    ("\ud800", r"'\ud800'"),
    ("20.500.11935/\u2028line", r"\u2028"),
    (".", "'.'"),
    ("..", "'..'"),
    ("20.500.11935/../x", "'..'"),
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("20.500.11935/raw_files", "raw_files"),
    ("p" * 513, "longer than 512"),
    (123, "must be a string"),
]


@pytest.mark.parametrize(("pid", "named"), BAD_PIDS, ids=[repr(p)[:20] for p, _ in BAD_PIDS])
@pytest.mark.parametrize("shape", ["v4", "v3"])
def test_bad_dataset_pid_is_422_naming_it_and_starts_nothing(api, pid, named, shape):
    document = job(["20.500.11935/good", pid])
    if shape == "v3":
        document["datasetList"] = document.pop("jobParams")["datasetList"]
    # json.dumps writes a lone surrogate as the escape \ud800, as a hostile client would.
    response = api.post("/jobs", content=json.dumps(document).encode(), headers={"Content-Type": "text/plain"})
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]
    assert "[1].pid" in response.json()["detail"]  # which entry
    assert len(response.content) < 2000  # a 513-character PID is named, not echoed whole
    assert runs_of_jobs([document["id"]]) == []


@pytest.mark.parametrize(
    ("document", "status", "named"),
    [
        ({"id": "\ud800", "type": "archive"}, 422, r"'\ud800'"),
        ({"id": str(uuid.uuid4()), "type": "\ud800"}, 400, r"'\ud800'"),
        ({"id": str(uuid.uuid4()), "type": "x" * 100_000}, 400, "100002 characters"),
        ({"id": "y" * 100_000, "type": "archive"}, 422, "100002 characters"),
        ({"id": str(uuid.uuid4()), "type": ["archive"]}, 422, "['archive']"),
        (
            {"id": str(uuid.uuid4()), "type": "archive", "jobParams": {"datasetList": ["pid-only"]}},
            422,
            "[0] must be an object",
        ),
        ({"id": str(uuid.uuid4()), "type": "archive", "jobParams": {"datasetList": "20.500/x"}}, 422, "must be a list"),
        ({"id": str(uuid.uuid4()), "type": "archive", "jobParams": "x"}, 422, "jobParams"),
    ],
)
def test_bad_id_or_type_is_refused_naming_it_shortened(api, document, status, named):
    response = api.post("/jobs", content=json.dumps(document).encode())
    assert response.status_code == status, response.text
    assert named in response.json()["detail"]
    assert len(response.content) < 2000
    log_lines = api.log_path.read_text().splitlines()
    assert all(len(line) < 2000 for line in log_lines)


def test_lone_surrogate_as_raw_bytes_is_422(api):
    """Python's json.loads decodes bytes with surrogatepass: the UTF-8 encoded surrogate becomes '\ud800'."""
    response = api.post(
        "/jobs", content=b'{"id": "' + "\ud800".encode("utf-8", "surrogatepass") + b'", "type": "archive"}'
    )
    assert response.status_code == 422, response.text
    assert r"'\ud800'" in response.json()["detail"]


def test_too_many_datasets_is_422_naming_the_limit(api):
    document = job([f"20.500.11935/{i}" for i in range(1001)])
    response = api.post("/jobs", json=document)
    assert response.status_code == 422, response.text
    assert "1001 datasets" in response.text and "API_MAX_DATASETS_PER_JOB" in response.text
    assert runs_of_jobs([document["id"]]) == []


def test_forged_forwarded_for_is_not_logged_as_the_client(api):
    response = httpx.post(f"{api.base_url}jobs", json=job(), headers={"X-Forwarded-For": "203.0.113.66"})
    assert response.status_code == 401
    rejections = [line for line in api.log_path.read_text().splitlines() if "missing Authorization" in line]
    assert rejections and all("from 127.0.0.1" in line for line in rejections)
    assert "203.0.113.66" not in api.log_path.read_text()


def test_forwarded_for_is_believed_from_the_configured_proxy(tmp_path, secrets_dir, prefect_api_url, deployments):
    with start_api(tmp_path, secrets_dir, prefect_api_url, deployments, API_FORWARDED_ALLOW_IPS="127.0.0.1") as server:
        response = httpx.post(f"{server.url}{ROOT}/jobs", json=job(), headers={"X-Forwarded-For": "203.0.113.66"})
        assert response.status_code == 401
        assert "from 203.0.113.66: missing Authorization" in server.log_path.read_text()


def test_job_prefect_refuses_is_422_without_echo(tmp_path, secrets_dir, prefect_api_url, deployments):
    """Prefect refuses flow-run parameters over 512 KiB (its 422 echoes the whole request): with the API's own
    limits raised, such a job reaches Prefect, and the API answers 422 (SciCat must not retry), short."""
    from archiver.config.secrets import read_secret, secret_spec

    limits = {"API_MAX_BODY_BYTES": str(4 * MiB), "API_MAX_DATASETS_PER_JOB": "20000"}
    document = job([f"20.500.11935/{uuid.uuid4()}-{i:08d}" for i in range(9000)])
    auth = {"Authorization": read_secret(secret_spec("ARCHIVER_API_AUTH_FILE"), secrets_dir, {})}
    with start_api(tmp_path, secrets_dir, prefect_api_url, deployments, **limits) as server:
        started = time.monotonic()
        response = httpx.post(f"{server.url}{ROOT}/jobs", json=document, headers=auth, timeout=120)
        elapsed = time.monotonic() - started
        log_lines = server.log_path.read_text().splitlines()
    assert response.status_code == 422, response.text[:500]
    assert "Prefect refused the flow run (HTTP 422)" in response.json()["detail"]
    assert "parameters" in response.json()["detail"]
    assert len(response.content) < 2000
    assert all(len(line) < 2000 for line in log_lines)
    assert elapsed < 30
    assert runs_of_jobs([document["id"]]) == []


def test_openapi_declares_the_auth_scheme_and_job_types_and_docs_are_off(api):
    document = api.get("/openapi.json").json()
    operation = document["paths"][f"{ROOT}/jobs"]["post"]
    [requirement] = operation["security"]
    [scheme_name] = requirement
    scheme = document["components"]["securitySchemes"][scheme_name]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["properties"]["type"]["enum"] == ["archive", "retrieve"]
    assert api.get("/docs").status_code == 404  # swagger-ui would come from a CDN


def test_property_based_run_against_the_openapi_document_gives_no_server_error(api):
    """schemathesis generates valid and invalid requests from /openapi.json, with and without the Authorization
    header; none may get a 5xx, and a refused job must not have started a run."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error

    # The upload endpoints need a seeded landing zone and a SciCat user: test_uploads.py fuzzes them. Fresh links
    # need the flows' settings seeded in Prefect (without them they answer 503 on purpose): test_retrieval_links.py.
    schema = (
        schemathesis.openapi.from_url(f"{api.base_url}openapi.json")
        .exclude(tag="uploads")
        .exclude(path_regex=r"/links$")
    )
    cases = st.one_of(
        schema.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    )
    refused_job_ids: list[str] = []
    accepted_job_ids: list[str] = []  # hypothesis repeats values: a refused repost of an accepted job has a run
    statuses: dict[int, int] = {}

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases, authenticated=st.booleans())
    def run(case, authenticated):
        headers = {"Authorization": api.headers["Authorization"]} if authenticated else {}
        response = case.call_and_validate(base_url=api.server.url, headers=headers, checks=[not_a_server_error])
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if case.path.endswith("/jobs") and isinstance(case.body, dict) and isinstance(case.body.get("id"), str):
            (accepted_job_ids if response.status_code == 200 else refused_job_ids).append(case.body["id"])

    started = time.monotonic()
    run()
    print(f"schemathesis: {sum(statuses.values())} requests in {time.monotonic() - started:.0f} s, statuses {statuses}")
    assert any(status == 401 for status in statuses) and any(
        400 <= status < 500 and status != 401 for status in statuses
    )
    refused = sorted(set(refused_job_ids) - set(accepted_job_ids))
    started_runs = runs_of_jobs(refused) if refused else []
    assert started_runs == [], [r.name for r in started_runs]


def test_prefect_that_never_answers_is_504_within_the_timeout(tmp_path, secrets_dir, deployments):
    """A socket that accepts connections and never answers: the API gives up after API_PREFECT_TIMEOUT_S."""
    import socket

    from archiver.config.secrets import read_secret, secret_spec

    auth = {"Authorization": read_secret(secret_spec("ARCHIVER_API_AUTH_FILE"), secrets_dir, {})}
    with socket.create_server(("127.0.0.1", 0)) as silent:
        prefect_url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        with start_api(tmp_path, secrets_dir, prefect_url, deployments, API_PREFECT_TIMEOUT_S="3") as server:
            started = time.monotonic()
            response = httpx.post(f"{server.url}{ROOT}/jobs", json=job(), headers=auth, timeout=60)
            elapsed = time.monotonic() - started
            ready = httpx.get(f"{server.url}{ROOT}/health/readyz", timeout=60)
    assert response.status_code == 504, response.text
    assert "API_PREFECT_TIMEOUT_S" in response.json()["detail"]
    assert 2.5 < elapsed < 15
    assert ready.status_code == 503 and "no answer within 3 s" in ready.json()["problems"]["prefect"]
