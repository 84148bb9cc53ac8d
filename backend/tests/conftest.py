"""Test harness of real services, shared by every test tier.

- `prefect_api_url`: a Prefect server subprocess on a fresh PostgreSQL database
  (127.0.0.1:5432), dropped after the session. Set ARCHIVER_TEST_PREFECT_DB=sqlite
  to run it on SQLite instead. It requires an auth string, which the test process's Prefect
  settings (and environment) carry, as every client of the stack's server must.
- `s3_endpoint`: a SeaweedFS S3 server over HTTP that knows the accounts of S3_TEST_ACCOUNTS (and no other
  key); `s3` a boto3 client for it with the root account; `cold_s3_proxy` a cold storage tier (GLACIER-like
  restores) in front of it.
- `lts_root`: a temporary folder standing in for the LTS.
- `secrets_dir`: a temporary .secrets/ filled by `archiver secrets init`, with the test S3 accounts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from pathlib import Path

import pytest

from archiver import local_services
from archiver.config.secrets import ARCHIVER_S3, MINIO_ROOT, PRESIGN_S3, S3Account, init_secrets
from archiver.storage.s3 import S3Credentials, s3_client

S3_TEST_CREDENTIALS = S3Credentials("testing-access-key", "testing-secret-key")
S3_TEST_REGION = "eu-west-1"
# The S3 accounts the test S3 server knows (with the access local_services.ACCOUNT_ACTIONS gives them).
S3_TEST_ACCOUNTS = {
    MINIO_ROOT: S3_TEST_CREDENTIALS,
    ARCHIVER_S3: S3Credentials("testing-archiver-key", "testing-archiver-secret"),
    PRESIGN_S3: S3Credentials("testing-presign-key", "testing-presign-secret"),
}


def pytest_configure(config):
    # pytest-xdist's workers (gw0, gw1, ...) start servers side by side: each picks ports from a band of its own.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        local_services.use_port_band(int(worker[2:]))


def write_s3_account(secrets_dir: Path, account: S3Account, credentials: S3Credentials) -> None:
    (secrets_dir / account.user.filename).write_text(credentials.access_key + "\n")
    (secrets_dir / account.password.filename).write_text(credentials.secret_key + "\n")


def init_test_secrets(path: Path) -> None:
    """`archiver secrets init`, then the S3 accounts the test S3 server knows in place of its random ones."""
    init_secrets(path)
    for account, credentials in S3_TEST_ACCOUNTS.items():
        write_s3_account(path, account, credentials)


@pytest.fixture(scope="session")
def services_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def prefect_api_url(services_log_dir) -> str:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    # Authentication on, as in the stack: every client the tests start must send the credentials.
    auth_string = "tests:" + secrets.token_urlsafe(16)
    with contextlib.ExitStack() as stack:
        database_url = None
        if os.environ.get("ARCHIVER_TEST_PREFECT_DB", "postgresql") != "sqlite":
            database_url = stack.enter_context(local_services.postgres_database())
        server = stack.enter_context(
            local_services.prefect_server(
                services_log_dir / "prefect",
                auth_string,
                database_url=database_url,
            )
        )
        api_url = f"{server.url}/api"
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth_string}))
        stack.enter_context(_environ(PREFECT_API_URL=api_url, PREFECT_API_AUTH_STRING=auth_string))
        yield api_url


@contextlib.contextmanager
def _environ(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_endpoint(services_log_dir, tmp_path_factory) -> str:
    data_dir = tmp_path_factory.mktemp("s3-data")
    with local_services.s3_server(
        data_dir, services_log_dir, local_services.account_identities(S3_TEST_ACCOUNTS)
    ) as server:
        yield server.url


@pytest.fixture
def s3(s3_endpoint):
    return s3_client(s3_endpoint, S3_TEST_REGION, S3_TEST_CREDENTIALS)


@pytest.fixture
def cold_s3_proxy(s3_endpoint):
    """The cold storage tier (devtools/cold_s3.py) in front of the session's S3 server, restores taking 0.6 s;
    change its behaviour through `.tier`."""
    from archiver.devtools.cold_s3 import ColdTier, cold_s3_proxy

    with cold_s3_proxy(s3_endpoint, S3_TEST_REGION, S3_TEST_CREDENTIALS, ColdTier(restore_delay_s=0.6)) as proxy:
        yield proxy


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses, valid as bucket name and Prefect variable suffix."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def lts_root(tmp_path) -> Path:
    root = tmp_path / "lts"
    root.mkdir()
    return root


@pytest.fixture
def secrets_dir(tmp_path) -> Path:
    path = tmp_path / "secrets"
    init_test_secrets(path)
    return path


# --- scicat fixtures ---
# One SciCat development server for the session; `scicat_dev` gives each test a
# view of the request log starting at that test, and clears injected faults.


class ScicatDev:
    """Control of the SciCat development server through its /dev endpoints, and raw SciCat calls with
    `call` (given the account it accepts: logs in on first use and again after the tokens expired)."""

    def __init__(self, url: str, credentials=None):
        import httpx

        self.url = url
        self._http = httpx.Client(base_url=url, timeout=10)
        self._credentials = credentials
        self._token: str | None = None
        self.fail_next(0)
        self.start_seq = self.state()["nextSeq"]

    def requests(self) -> list[dict]:
        """SciCat calls received since this object was made, oldest first."""
        return self._http.get("/dev/requests", params={"since": self.start_seq - 1}).raise_for_status().json()

    def fail_next(self, count: int, status: int = 503, *, after: bool = False, match: str | None = None) -> None:
        """The next `count` SciCat calls (those whose 'METHOD path' contains `match`) answer `status`; `after`:
        each is carried out first, its answer lost."""
        faults = {"count": count, "status": status, "after": after, "match": match}
        self._http.post("/dev/faults", json=faults).raise_for_status()

    def expire_tokens(self) -> None:
        self._http.delete("/dev/tokens").raise_for_status()

    def state(self) -> dict:
        return self._http.get("/dev/state").raise_for_status().json()

    def call(self, method: str, path: str, **kwargs):
        """`method path` (e.g. "/api/v3/datasets") with a bearer token; the httpx.Response, whatever its status."""
        for _ in range(2):
            if self._token is None:
                login = {"username": self._credentials.username, "password": self._credentials.password}
                self._token = (
                    self._http.post("/api/v3/auth/login", json=login).raise_for_status().json()["access_token"]
                )
            response = self._http.request(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if response.status_code != 401:
                break
            self._token = None
        return response


class HttpReceiver:
    """A small real HTTP server standing in for what SciCat's job action calls (the archiver API): records
    each request (`method`, `path`, `headers`, `body`) and answers `status` with a flow-run-like JSON body."""

    def __init__(self, status: int = 201):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.received.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length).decode(),
                    }
                )
                answer = json.dumps({"uuid": "run-1", "name": "archive-run"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_DELETE = _record

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def make_http_receiver():
    """`make_http_receiver(status=201)`: a started HttpReceiver, closed after the test."""
    receivers = []

    def make(status: int = 201) -> HttpReceiver:
        receivers.append(HttpReceiver(status))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


@pytest.fixture
def http_receiver(make_http_receiver) -> HttpReceiver:
    return make_http_receiver()


@pytest.fixture(scope="session")
def scicat_secrets_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scicat-secrets")
    init_test_secrets(path)
    return path


@pytest.fixture(scope="session")
def scicat_url(services_log_dir, scicat_secrets_dir) -> str:
    with local_services.scicat_dev_server(scicat_secrets_dir, services_log_dir) as server:
        yield server.url


@pytest.fixture(scope="session")
def scicat_credentials(scicat_secrets_dir):
    from archiver.scicat.client import ScicatCredentials

    return ScicatCredentials.from_secret_files(scicat_secrets_dir, environ={})


@pytest.fixture
def scicat_settings(scicat_url):
    from archiver.config.settings import ScicatSection

    return ScicatSection(endpoint=scicat_url)


@pytest.fixture
def scicat_dev(scicat_url, scicat_credentials) -> ScicatDev:
    return ScicatDev(scicat_url, scicat_credentials)


@pytest.fixture
def scicat_dev_for():
    """A ScicatDev for another development server: `scicat_dev_for(url, secrets_dir)` (the account of secrets_dir)."""
    from archiver.scicat.client import ScicatCredentials

    return lambda url, secrets_dir: ScicatDev(url, ScicatCredentials.from_secret_files(secrets_dir, environ={}))


# --- engine fixtures ---


@pytest.fixture
def bucket(s3, unique_name) -> str:
    """A fresh, empty bucket on the test S3 server."""
    s3.create_bucket(Bucket=unique_name, CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    return unique_name


@pytest.fixture
def second_bucket(s3, unique_name) -> str:
    name = f"{unique_name}-second"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    return name
