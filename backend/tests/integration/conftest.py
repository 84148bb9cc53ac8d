"""A whole pipeline for flow tests: settings seeded into the test Prefect server by `archiver config`'s own
code, pointing at the test S3 server, the SciCat development server and a temporary LTS folder."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from archiver.config.settings import Settings, load_vars_file
from archiver.tools.seeding import read_inputs, seed
from tests.integration.cold_lts import use_cold_lts

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Pipeline:
    settings: Settings
    s3: object
    scicat: object  # ScicatClient logged in as the archiver's account
    scicat_dev: object
    lts_root: Path
    vars_file: Path
    limits_file: Path
    secrets_dir: Path

    def reseed(self) -> None:
        seed(read_inputs(self.vars_file, self.limits_file, self.secrets_dir))

    def landing_keys(self, pid: str) -> list[str]:
        from archiver.packing.naming import landing_prefix

        listing = self.s3.list_objects_v2(Bucket=self.settings.s3.landingzone_bucket, Prefix=landing_prefix(pid))
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def retrieval_keys(self, pid: str) -> list[str]:
        from archiver.packing.naming import retrieval_prefix

        listing = self.s3.list_objects_v2(Bucket=self.settings.s3.retrieval_bucket, Prefix=retrieval_prefix(pid))
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def new_job(self, job_type: str, pids: list[str], files: dict[str, list[str]] | None = None) -> str:
        """A SciCat job naming `pids` (and per PID the `files` to retrieve), created as SciCat would store it;
        returns its id."""
        return self.scicat.create_job(job_type, pids, files=files).id

    def set_vars(self, section: str, **values) -> None:
        """Change settings of `prefect-vars.toml` and seed them: the next flow run uses them."""
        data = tomllib.loads(self.vars_file.read_text())
        data[section].update(values)
        self.vars_file.write_text(tomli_w.dumps(data))
        self.settings = load_vars_file(self.vars_file)
        self.reseed()

    def job(self, job_id: str, version: str = "v3") -> dict:
        """The job as SciCat serves it under /api/{version}/jobs (v3 or v4 shape)."""
        from archiver.scicat.client import ScicatClient

        settings = self.settings.scicat.model_copy(
            update={"jobs_api_prefix": f"/api/{version}/", "job_status_schema": version}
        )
        with ScicatClient(settings, self.scicat._credentials) as client:
            return client.get_job(job_id).to_wire()

    def set_settings(self, **values) -> None:
        """Change keys of prefect-vars.toml (any section) and seed again."""
        from archiver.config.settings import known_keys

        data = tomllib.loads(self.vars_file.read_text())
        for key, value in values.items():
            data[known_keys()[key]][key] = value
        self.vars_file.write_text(tomli_w.dumps(data))
        self.settings = load_vars_file(self.vars_file)
        self.reseed()

    def set_limits(self, **limits: int) -> None:
        data = tomllib.loads(self.limits_file.read_text())
        for name, limit in limits.items():
            data[name]["limit"] = limit
        self.limits_file.write_text(tomli_w.dumps(data))
        self.reseed()


@pytest.fixture
def pipeline_secrets_dir(scicat_secrets_dir) -> Path:
    """The secrets `archiver config` seeds for the pipeline (the SciCat account of the development server)."""
    return scicat_secrets_dir


@pytest.fixture
def pipeline(
    tmp_path,
    prefect_api_url,
    s3_endpoint,
    s3,
    scicat_url,
    pipeline_secrets_dir,
    scicat_credentials,
    scicat_dev,
    unique_name,
) -> Pipeline:
    from archiver.scicat.client import ScicatClient

    lts_root = tmp_path / "lts"
    lts_root.mkdir()
    data = tomllib.loads((REPO / "prefect-vars.toml").read_text())
    data["archiver"].update(
        ARCHIVER_TARGET_SIZE_MB=1,
        ARCHIVER_DATASET_CONCURRENCY=2,
        ARCHIVER_DATABLOCK_CONCURRENCY=2,
        ARCHIVER_SCRATCH_FOLDER=str(tmp_path / "scratch"),
    )
    data["lts"].update(LTS_STORAGE_ROOT=str(lts_root), LTS_FREE_SPACE_PERCENTAGE=1, LTS_FILE_TIMEOUT_S=10)
    data["s3"].update(
        S3_ENDPOINT=s3_endpoint,
        S3_EXTERNAL_ENDPOINT=s3_endpoint,
        S3_LANDINGZONE_BUCKET=f"{unique_name}-landing",
        S3_RETRIEVAL_BUCKET=f"{unique_name}-retrieval",
    )
    data["scicat"].update(SCICAT_ENDPOINT=scicat_url)
    vars_file = tmp_path / "prefect-vars.toml"
    vars_file.write_text(tomli_w.dumps(data))
    limits_file = tmp_path / "concurrency-limits.toml"
    limits_file.write_text((REPO / "concurrency-limits.toml").read_text())
    pipeline = Pipeline(
        settings=load_vars_file(vars_file),
        s3=s3,
        scicat=None,
        scicat_dev=scicat_dev,
        lts_root=lts_root,
        vars_file=vars_file,
        limits_file=limits_file,
        secrets_dir=pipeline_secrets_dir,
    )
    pipeline.reseed()
    with ScicatClient(pipeline.settings.scicat, scicat_credentials) as client:
        pipeline.scicat = client
        yield pipeline


@pytest.fixture
def serve_deployments(tmp_path, pipeline, prefect_api_url):
    """Start `archiver serve` (a Prefect runner executing the deployments as subprocesses) with extra environment."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    started = []

    def start(**environment: str):
        log = (tmp_path / "serve.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "archiver.cli", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1", **environment},
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(params=["posix", "s3"])
def lts_backend(request, pipeline, s3, unique_name):
    """The LTS the flows write to: the pipeline's folder, or a bucket on the cold tier stand-in (DEEP_ARCHIVE,
    restores taking 0.6 s), reached with the LTS account of the Secret blocks lts-s3-user / lts-s3-password."""
    if request.param == "posix":
        return None
    proxy = request.getfixturevalue("cold_s3_proxy")
    bucket = f"{unique_name}-lts"
    use_cold_lts(pipeline, s3, proxy, bucket)
    return proxy, bucket


@pytest.fixture
def own_prefect(tmp_path, prefect_api_url):
    """A Prefect server of this test's own (tests/integration/own_prefect.py), with the session server's
    credentials; point this process at it with `own_prefect.prefect_api(server.api_url)`."""
    from archiver import local_services
    from tests.integration.own_prefect import RestartableServer

    with local_services.postgres_database() as database_url:
        server = RestartableServer(tmp_path / "own-prefect", database_url)
        server.start()
        try:
            yield server
        finally:
            server.stop()
