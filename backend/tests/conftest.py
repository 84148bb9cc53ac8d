"""Test harness of real services, shared by every test tier.

- `prefect_api_url`: a Prefect server subprocess on a fresh PostgreSQL database
  (127.0.0.1:5432), dropped after the session. Set ARCHIVER_TEST_PREFECT_DB=sqlite
  to run it on SQLite instead. The test process's Prefect settings point at it.
- `s3_endpoint`: moto's S3 server over HTTP; `s3` a boto3 client for it.
- `lts_root`: a temporary folder standing in for the LTS.
- `secrets_dir`: a temporary .secrets/ filled by `archiver secrets init`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest

from archiver import local_services
from archiver.config.secrets import init_secrets
from archiver.storage.s3 import S3Credentials, s3_client

S3_TEST_CREDENTIALS = S3Credentials("testing-access-key", "testing-secret-key")
S3_TEST_REGION = "eu-west-1"


@pytest.fixture(scope="session")
def services_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def prefect_api_url(services_log_dir) -> str:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with contextlib.ExitStack() as stack:
        database_url = None
        if os.environ.get("ARCHIVER_TEST_PREFECT_DB", "postgresql") != "sqlite":
            database_url = stack.enter_context(local_services.postgres_database())
        server = stack.enter_context(
            local_services.prefect_server(services_log_dir / "prefect", database_url=database_url)
        )
        api_url = f"{server.url}/api"
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
        stack.enter_context(_environ(PREFECT_API_URL=api_url))
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
def s3_endpoint(services_log_dir) -> str:
    with local_services.s3_server(services_log_dir) as server:
        yield server.url


@pytest.fixture
def s3(s3_endpoint):
    return s3_client(s3_endpoint, S3_TEST_REGION, S3_TEST_CREDENTIALS)


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
    init_secrets(path)
    return path


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
