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
from archiver.local_services import free_port

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
ENV_FILES = (".env", ".development.env", "backend/tests/stack/offline.env")


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
        terminalreporter.write_sep("-", "compose stack timings")
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
    }
    stack = Stack(project, env, f"http://127.0.0.1:{proxy_port}", secrets_dir)
    try:
        _timed("runtime image build", stack.compose, "build")
        _timed("stack up -d --wait", stack.compose, "up", "-d", "--wait")
        _timed("prefect-config one-shot", stack.run_one_shot, "prefect-config")
        yield stack
    finally:
        _timed("stack down -v", stack.compose, "down", "-v", "--remove-orphans", "--timeout", "20")
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        assert not left, f"containers of {project} still exist after down: {left}"
