"""The compose stack, built offline and brought up once per session under its own project name.

`stack` runs build_offline.sh (engine, Compose v2, base and stand-in images), builds the
runtime image, brings the stack up with the README's env files plus offline.env, runs the
`prefect-config` one-shot and, at the end, takes down (with volumes) only its own project.
Published ports are free ports on 127.0.0.1 and the network and LTS volume get names of
their own, so a developer's stack or a concurrent session is never touched.
Skipped (with the reason) when not root or without apt-get; ARCHIVER_SKIP_STACK=1 skips too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from archiver.config.secrets import init_secrets
from archiver.config.settings import load_vars_file
from archiver.local_services import free_port
from archiver.storage.s3 import S3Credentials, s3_client

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
ENV_FILES = (".env", ".development.env", "backend/tests/stack/offline.env")
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    base_url: str  # the proxy, e.g. http://127.0.0.1:PORT
    secrets_dir: Path
    one_shots: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def prefect_api(self) -> str:
        return f"{self.base_url}/prefect-ui/api"

    @property
    def scicat_url(self) -> str:
        """The SciCat development server, published on the loopback interface."""
        return f"http://127.0.0.1:{self.env['SCICAT_DEV_PORT']}"

    @property
    def s3_url(self) -> str:
        """MinIO (stand-in) as the host reaches it: MINIO_EXTERNAL_ENDPOINT of the development stack."""
        return f"http://localhost:{self.env['MINIO_S3_PORT']}"

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        env_files = [arg for name in ENV_FILES for arg in ("--env-file", name)]
        command = ["docker", "compose", "-p", self.project, *env_files, *args]
        result = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def run_one_shot(self, service: str) -> subprocess.CompletedProcess:
        result = self.compose("run", "--rm", service, check=False)
        self.one_shots[service] = result
        return result

    def services(self) -> dict[str, dict]:
        """Service name -> its container's `docker compose ps` entry."""
        output = self.compose("ps", "--all", "--format", "json").stdout.strip()
        entries = json.loads(output) if output.startswith("[") else [json.loads(line) for line in output.splitlines()]
        return {entry["Service"]: entry for entry in entries}

    def enabled_services(self) -> set[str]:
        return set(self.compose("config", "--services").stdout.split())

    def prefect(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = httpx.request(method, f"{self.prefect_api}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def start_deployment_run(self, deployment: str, parameters: dict) -> dict:
        """A run of 'flow/deployment' created through the Prefect API, as an operator starts one in the UI."""
        found = self.prefect("GET", f"/deployments/name/{deployment}").json()
        return self.prefect("POST", f"/deployments/{found['id']}/create_flow_run", json={"parameters": parameters}).json()

    def wait_for_flow_run(self, run_id: str, timeout_s: float = 300) -> dict:
        """The flow run once it is in a final state (COMPLETED, FAILED, CRASHED, CANCELLED)."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.prefect("GET", f"/flow_runs/{run_id}").json()
            if run["state_type"] in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run['name']} still {run['state_name']} after {timeout_s:.0f}s")
            time.sleep(2)

    def flow_run_failure(self, run: dict) -> str:
        """The run's state message and its last log lines, for assertion messages."""
        logs = self.prefect("POST", "/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "TIMESTAMP_DESC", "limit": 40,
        }).json()
        lines = "\n".join(f"{entry['level']} {entry['message'][:500]}" for entry in reversed(logs))
        return f"{run['name']}: {run['state_name']}: {(run.get('state') or {}).get('message')}\n{lines}"

    def scicat_requests(self, since: int = 0) -> list[dict]:
        return httpx.get(f"{self.scicat_url}/dev/requests", params={"since": since}, timeout=30).json()

    def record_timing(self, label: str, seconds: float) -> None:
        TIMINGS.append(f"{label}: {seconds:.0f}s")

    def note(self, line: str) -> None:
        """A figure for the terminal summary."""
        TIMINGS.append(line)

    def scicat_state(self) -> dict:
        return httpx.get(f"{self.scicat_url}/dev/state", timeout=30).json()

    def secret(self, filename: str) -> str:
        return (self.secrets_dir / filename).read_text().strip()

    def flow_run_container(self, run: dict) -> dict:
        """`docker inspect` of the container a Docker worker started for the run (infrastructure_pid)."""
        pid = run.get("infrastructure_pid") or ""
        assert pid, f"flow run {run['name']} has no infrastructure_pid: no worker started it"
        container_id = pid.rsplit(":", 1)[-1]
        return json.loads(subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True,
                                         check=True).stdout)[0]


def _skip_reason() -> str | None:
    if os.environ.get("ARCHIVER_SKIP_STACK") == "1":
        return "ARCHIVER_SKIP_STACK=1"
    if os.geteuid() != 0:
        return "the stack tier installs Docker and starts dockerd: needs root"
    if not shutil.which("apt-get"):
        return "the stack tier installs Docker from Debian's archive: needs apt-get"
    return None


TIMINGS: list[str] = []  # shown in the terminal summary, also when output is captured


def _timed(label: str, function, *args, **kwargs):
    start = time.monotonic()
    result = function(*args, **kwargs)
    TIMINGS.append(f"{label}: {time.monotonic() - start:.0f}s")
    return result


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "compose stack timings and figures")
        for line in TIMINGS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    _timed("build_offline.sh", subprocess.run, [str(HERE / "build_offline.sh")], check=True)

    secrets_dir = tmp_path_factory.mktemp("stack-secrets")
    init_secrets(secrets_dir)
    project = f"archiver-stacktest-{uuid.uuid4().hex[:8]}"
    proxy_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "SECRETS_DIR": str(secrets_dir),
        "STACK_NETWORK": project,
        "LTS_VOLUME_NAME": f"{project}-lts",
        "PROXY_HTTP_PORT": str(proxy_port),
        "MINIO_S3_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "SCICAT_DEV_PORT": str(free_port()),
        # An image tag of its own: a concurrent session building the runtime image from another
        # checkout cannot change what this stack's flow runs execute. Layers are still shared.
        "ARCHIVER_IMAGE": f"archiver-runtime:{project}",
    }
    stack = Stack(project, env, f"http://127.0.0.1:{proxy_port}", secrets_dir)
    try:
        _timed("runtime image build", stack.compose, "build")
        _timed("stack up -d --wait", stack.compose, "up", "-d", "--wait")
        _timed("prefect-config one-shot", stack.run_one_shot, "prefect-config")
        _timed("prefect-flows-deployment one-shot", stack.run_one_shot, "prefect-flows-deployment")
        yield stack
    finally:
        _remove_flow_run_containers(project)
        _timed("stack down -v", stack.compose, "down", "-v", "--remove-orphans", "--timeout", "20")
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        subprocess.run(["docker", "rmi", "--no-prune", env["ARCHIVER_IMAGE"]], capture_output=True)
        assert not left, f"containers of {project} still exist after down: {left}"


@pytest.fixture(scope="session")
def stack_s3(stack):
    """boto3 client for the stack's S3 (MinIO stand-in) at its published address."""
    region = load_vars_file(REPO / "prefect-vars.toml").minio.region
    return s3_client(stack.s3_url, region, S3Credentials(stack.secret("miniouser.txt"), stack.secret("miniopass.txt")))


def flow_run_containers(project: str) -> list[str]:
    """Containers the stack's workers launched for flow runs (on the stack's network, kept after exit)."""
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"network={project}", "--filter", "label=io.prefect.flow-run-id"],
        capture_output=True, text=True, check=True,
    ).stdout.split()


def _remove_flow_run_containers(project: str) -> None:
    # Not compose's containers: `down` would leave them (and fail to remove the network they are on).
    containers = flow_run_containers(project)
    if containers:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)
