"""`archiver dev`: the whole pipeline on this machine, without Docker.

Starts a Prefect server (UI included, state in a local folder), an S3 server,
the SciCat development server, the archiver API and a runner serving the
deployments; seeds the configuration the way the prefect-config container
does; then creates a test dataset, archives and retrieves it through SciCat
jobs (SciCat -> API -> Prefect, as in production), checks every retrieved
byte against the original checksums, and says what it did. Ctrl-C (or SIGTERM)
stops everything it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tarfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import tomli_w

from archiver import local_services
from archiver.config.secrets import PREFECT_AUTH_FILE_ENV, init_secrets, read_secret, secret_path, secret_spec

REPO_FILES = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DevOptions:
    workdir: Path
    num_files: int = 5
    file_size_mb: float = 4.0
    target_size_mb: int = 8
    prefect_port: int = 4200
    keep_running: bool = True
    # Prefect's database (SQLAlchemy URL, postgresql+asyncpg://...); None: SQLite under workdir. SQLite
    # answers concurrent writes with 503s that Prefect's client retries after about 2 s each.
    database_url: str | None = None


def say(line: str) -> None:
    print(f"[archiver dev {time.strftime('%H:%M:%S')}] {line}", flush=True)


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    return local_services.free_port()


def _write_vars(options: DevOptions, s3_url: str, scicat_url: str, lts: Path) -> Path:
    data = tomllib.loads((REPO_FILES / "prefect-vars.toml").read_text())
    data["archiver"].update(
        ARCHIVER_SCRATCH_FOLDER=str(options.workdir / "scratch"), ARCHIVER_TARGET_SIZE_MB=options.target_size_mb
    )
    data["lts"].update(LTS_STORAGE_ROOT=str(lts), LTS_FREE_SPACE_PERCENTAGE=1)
    data["s3"].update(S3_ENDPOINT=s3_url, S3_EXTERNAL_ENDPOINT=s3_url)
    data["scicat"].update(SCICAT_ENDPOINT=scicat_url)
    path = options.workdir / "prefect-vars.toml"
    path.write_text(tomli_w.dumps(data))
    return path


@dataclass(frozen=True)
class Pipeline:
    """The running local pipeline: where its parts answer."""

    prefect_url: str
    s3_url: str
    scicat_url: str
    secrets_dir: Path
    lts: Path
    prefect_pid: int  # the Prefect server's process (benchmarks read its CPU time)


@contextlib.contextmanager
def pipeline(options: DevOptions) -> Iterator[Pipeline]:
    """Every service of the pipeline, seeded and with the deployments served, until the block ends."""
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    secrets_dir = workdir / "secrets"
    init_secrets(secrets_dir)
    lts = workdir / "lts"
    lts.mkdir(exist_ok=True)
    logs = workdir / "logs"
    with contextlib.ExitStack() as stack:
        say(f"starting services; logs in {logs}")
        auth_spec = secret_spec(PREFECT_AUTH_FILE_ENV)
        auth_file = secret_path(auth_spec, secrets_dir, environ={})
        os.environ["PREFECT_API_AUTH_STRING"] = auth_string = read_secret(auth_spec, secrets_dir, environ={})
        prefect = stack.enter_context(
            local_services.prefect_server(
                workdir / "prefect",
                auth_string,
                database_url=options.database_url,
                port=_port(options.prefect_port),
                ui=True,
                extra_env={"PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "2"},
            )
        )
        api_url = f"{prefect.url}/api"
        os.environ["PREFECT_API_URL"] = api_url
        s3 = stack.enter_context(local_services.s3_server(workdir / "s3", logs, _s3_identities(secrets_dir)))
        api_port = local_services.free_port()
        api_env = {"PREFECT_API_URL": api_url, "ARCHIVER_SECRETS_DIR": str(secrets_dir)}
        stack.enter_context(
            local_services.service(
                "archiver API",
                [sys.executable, "-m", "archiver.cli", "api", "--port", str(api_port)],
                f"http://127.0.0.1:{api_port}",
                "/health/livez",
                logs / "api.log",
                env=api_env,
                timeout=60,
            )
        )
        scicat = stack.enter_context(
            local_services.scicat_dev_server(
                secrets_dir,
                logs,
                archiver_url=f"http://127.0.0.1:{api_port}/jobs",
            )
        )
        say(f"Prefect UI  {prefect.url}/dashboard  (login: the contents of {auth_file})")
        say(f"S3          {s3.url}")
        say(f"SciCat      {scicat.url}  (state: {scicat.url}/dev/state)")
        say(f"archiver API http://127.0.0.1:{api_port}/openapi.json (POST /jobs)")

        vars_file = _write_vars(options, s3.url, scicat.url, lts)
        _seed(vars_file, secrets_dir)
        stack.enter_context(
            local_services.service(
                "deployment runner",
                [sys.executable, "-m", "archiver.cli", "serve"],
                api_url,
                None,
                # Polling every second: on a single machine a cheap query, and half a second less per job on average.
                logs / "serve.log",
                env={"PREFECT_API_URL": api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
                timeout=60,
            )
        )
        from archiver.config.deployments import DEPLOYMENT_NAMES

        local_services.poll_until(lambda: _deployments_ready(DEPLOYMENT_NAMES.values()), 120, "deployments to register")
        say("deployments served: " + ", ".join(DEPLOYMENT_NAMES.values()))
        try:
            yield Pipeline(prefect.url, s3.url, scicat.url, secrets_dir, lts, prefect.process.pid)
        finally:
            say("stopping everything this command started")


def run(options: DevOptions) -> int:
    with pipeline(options) as running:
        ok = False
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, or SIGTERM (see cli._dev)
            ok = _exercise(options, running.scicat_url, running.secrets_dir, running.prefect_url)
            if options.keep_running:
                say(f"everything keeps running; explore {running.prefect_url}/dashboard. Ctrl-C stops it all.")
                while True:
                    time.sleep(3600)
    return 0 if ok else 1


def _s3_identities(secrets_dir: Path) -> list[local_services.S3Identity]:
    from archiver.config.secrets import ARCHIVER_S3, MINIO_ROOT, PRESIGN_S3
    from archiver.storage.s3 import S3Credentials

    return local_services.account_identities(
        {
            account: S3Credentials.from_secret_files(account, secrets_dir, {})
            for account in (MINIO_ROOT, ARCHIVER_S3, PRESIGN_S3)
        }
    )


def _seed(vars_file: Path, secrets_dir: Path) -> None:
    from archiver.tools.seeding import read_inputs, seed

    report = seed(read_inputs(vars_file, REPO_FILES / "concurrency-limits.toml", secrets_dir))
    say(f"configuration seeded: {len(report.changes)} change(s), {report.unchanged} already up to date")


def _deployments_ready(names) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            for name in names:
                client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def _exercise(options: DevOptions, scicat_url: str, secrets_dir: Path, ui_url: str) -> bool:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from archiver.config.deployments import TEST_DATASET
    from archiver.config.settings import ScicatSection
    from archiver.job_command import wait_for_run
    from archiver.scicat.client import ScicatClient, ScicatCredentials

    credentials = ScicatCredentials.from_secret_files(secrets_dir, environ={})
    with ScicatClient(ScicatSection(endpoint=scicat_url), credentials) as scicat:
        say(f"creating a test dataset: {options.num_files} file(s) of {options.file_size_mb} MB")
        pid = f"20.500.12269/archiver-dev-{uuid.uuid4()}"
        creation: FlowRun = run_deployment(  # type: ignore[assignment]  # typed sync-or-async; sync here
            TEST_DATASET.full_name,
            timeout=0,
            parameters={"num_files": options.num_files, "file_size_mb": options.file_size_mb, "dataset_id": pid},
        )
        if not _watch(creation.id, ui_url):
            return False
        originals = {f.path: f.chk for b in scicat.get_origdatablocks(pid) for f in b.data_file_list}

        for job_type in ("archive", "retrieve"):
            job = scicat.create_job(job_type, [pid])
            say(f"SciCat {job_type} job {job.id} created; SciCat called the archiver API")
            flow_run_id = wait_for_run(job.created_id, 60)
            if not _watch(flow_run_id, ui_url):
                return False
            status = scicat.get_job(job.created_id)
            say(f"SciCat job {job.id}: {status.job_status_message}")
        entries = (status.job_result_object or {}).get("result", [])
        return _check_downloads(entries, originals, pid, ui_url)


def _watch(flow_run_id, ui_url: str) -> bool:
    from archiver.watch import follow_run

    return follow_run(flow_run_id, ui_url)


def _check_downloads(entries: list[dict], originals: dict[str, str | None], pid: str, ui_url: str) -> bool:
    retrieved: dict[str, str] = {}
    for entry in entries:
        content = httpx.get(entry["url"], timeout=120).raise_for_status().content
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    retrieved[member.name] = hashlib.new("sha256", extracted.read()).hexdigest()
    identical = retrieved == originals
    say(
        f"downloaded {len(entries)} datablock(s) from their presigned URLs: {len(retrieved)} file(s), "
        + ("byte-identical to the originals (sha256)" if identical else "DIFFERENT from the originals")
    )
    say(
        f"done: dataset {pid} was created, archived to the LTS, retrieved and verified; "
        f"every run is in the Prefect UI at {ui_url}/runs"
    )
    return identical
