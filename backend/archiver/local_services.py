"""Real services started as local subprocesses: a Prefect server and an S3 server.

Used by the test harness and by the local one-command run. Each service is a
context manager that starts the process, waits until it answers over HTTP,
and stops it (and everything it spawned) on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(condition, timeout: float = 120, what: str = "condition", interval: float = 0.5):
    """Call `condition` until it returns something truthy, and return that; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (e.g. the flow-run processes a Prefect runner started), from /proc."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            listed = children.read_text().split()
        except OSError:  # the thread or process ended meanwhile
            continue
        for child in listed:
            found += [int(child), *descendants(int(child))]
    return found


@dataclass(frozen=True)
class RunningService:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path


def _wait_until_up(name: str, process: subprocess.Popen, health_url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} while starting; log: {log_path}\n{_tail(log_path)}")
        try:
            if httpx.get(health_url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{name} did not answer at {health_url} within {timeout:.0f}s; log: {log_path}\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _dying_with_parent(command: list[str]) -> list[str]:
    """The command, made to get SIGTERM when the process that starts it dies (Linux's parent-death
    signal, through util-linux's setpriv): a killed `archiver dev` or test run leaves no service behind."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


@contextlib.contextmanager
def service(
    name: str, command: list[str], url: str, health_path: str | None, log_path: Path, env: dict[str, str] | None = None,
    timeout: float = 120, cwd: Path | None = None,
) -> Iterator[RunningService]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            _dying_with_parent(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd,
        )
    try:
        if health_path is not None:  # None: a process without an HTTP endpoint, up once started
            _wait_until_up(name, process, url + health_path, log_path, timeout)
        yield RunningService(name, url, process, log_path)
    finally:
        _stop(process)


def s3_server(
    log_dir: Path, port: int | None = None, env: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[RunningService]:
    """moto's S3 server over HTTP (any access key is accepted unless `env` sets INITIAL_NO_AUTH_ACTION_COUNT)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return service(
        "S3 server (moto)",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        url, "/moto-api/", log_dir / "s3-server.log", env=env,
    )


def prefect_server(
    home: Path, auth_string: str, database_url: str | None = None, port: int | None = None, ui: bool = False,
    extra_env: dict | None = None,
) -> contextlib.AbstractContextManager[RunningService]:
    """A Prefect server requiring `auth_string` ('user:password') of every client and of the UI's login;
    on PostgreSQL when `database_url` is given, else SQLite under `home`."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_API_URL": f"{url}/api",
        # The UI asks this address for the API. Set here, and the server started outside the repository:
        # Prefect reads `.env` from its working directory, and the compose stack's says /prefect-ui/api.
        "PREFECT_UI_API_URL": f"{url}/api",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Leases on disk: a restarted server keeps track of held concurrency slots.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
        "PREFECT_API_AUTH_STRING": auth_string,
        **(extra_env or {}),
    }
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return service(
        "Prefect server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        url, "/api/health", home / "prefect-server.log", env=env, timeout=180, cwd=home,
    )


@contextlib.contextmanager
def postgres_database(admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> Iterator[str]:
    """A fresh PostgreSQL database (with pg_trgm, which Prefect needs), dropped on exit.

    Yields the SQLAlchemy asyncpg URL Prefect takes."""
    import psycopg

    name = f"archiver_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0]
    try:
        with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        yield base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scicat_dev_server(
    secrets_dir: Path, log_dir: Path, archiver_url: str | None = None, port: int | None = None,
    archiver_method: str | None = None, archiver_headers: dict[str, str] | None = None, archiver_body: str | None = None,
    datasetlifecycle_endpoint: bool = False, unchanged_lifecycle_conflict: bool = False,
) -> contextlib.AbstractContextManager[RunningService]:
    """The SciCat development server (`archiver scicat-dev`); logs in the account of `secrets_dir`.

    `archiver_*`: the call made when a job is created (see docs/scicat.md); None keeps the command's default."""
    port = port or free_port()
    command = [sys.executable, "-m", "archiver.cli", "scicat-dev", "--host", "127.0.0.1", "--port", str(port),
               "--secrets-dir", str(secrets_dir)]
    if archiver_url:
        command += ["--archiver-url", archiver_url]
    if archiver_method is not None:
        command += ["--archiver-method", archiver_method]
    for name, value in (archiver_headers or {}).items():
        command += ["--archiver-header", f"{name}: {value}"]
    if archiver_body is not None:
        command += ["--archiver-body", archiver_body]
    if datasetlifecycle_endpoint:
        command.append("--datasetlifecycle-endpoint")
    if unchanged_lifecycle_conflict:
        command.append("--unchanged-lifecycle-conflict")
    return service(
        "SciCat development server", command, f"http://127.0.0.1:{port}", "/dev/health",
        log_dir / f"scicat-dev-{port}.log", timeout=60,
    )
