"""The compose stack, built offline and brought up once per session under its own project name.

`stack` runs the runbook of docs/deployment.md exactly as written there: build_offline.sh (engine,
Compose v2, base and stand-in images), the secret files from the `secrets-init` one-shot, `up`, the
`prefect-config` and `prefect-flows-deployment` one-shots; at the end its reset, after which nothing
of the stack may be left. The project name, published ports (free ports on 127.0.0.1), network,
LTS volume and image tag are its own, set in the environment (which wins over the env files), so a
developer's stack or a concurrent session is never touched.
Skipped (with the reason) when not root or without apt-get; ARCHIVER_SKIP_STACK=1 skips too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from archiver.config.settings import ScicatSection, load_vars_file
from archiver.flow_run_containers import remove_flow_run_containers
from archiver.local_services import free_port
from archiver.packing.cleanup import delete_retrieved
from archiver.packing.naming import landing_prefix, retrieval_prefix, safe_name
from archiver.scicat.client import ScicatClient, ScicatCredentials
from archiver.scicat.models import DataFile, NewOrigDatablock, new_raw_dataset
from archiver.storage.posix_store import LOCK_FILE_NAME
from archiver.storage.s3 import S3Credentials, s3_client

# The fault tests' shared checks report their differences like the tests' own asserts.
pytest.register_assert_rewrite("tests.stack.faults")

REPO = Path(__file__).resolve().parents[3]
ENV_FILES = (".env", ".development.env", "backend/tests/stack/offline.env")
RUNBOOK_DOC = REPO / "docs" / "deployment.md"
VARS = load_vars_file(REPO / "prefect-vars.toml")
LTS_ROOT = str(VARS.lts.storage_root)  # where flow-run containers mount the LTS volume
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    base_url: str  # the proxy, e.g. http://127.0.0.1:PORT
    secrets_dir: Path
    one_shots: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    env_files: tuple[str, ...] = ENV_FILES  # what `compose()` passes; the runbook's COMPOSE_ENV_FILES

    lts_root: str = LTS_ROOT

    @property
    def prefect_api(self) -> str:
        return f"{self.base_url}/prefect-ui/api"

    @property
    def prefect_auth(self) -> tuple[str, str]:
        """The Prefect server's credentials (prefectauth.txt, 'user:password') for HTTP basic auth."""
        user, password = self.secret("prefectauth.txt").split(":", 1)
        return user, password

    @property
    def scicat_url(self) -> str:
        """The SciCat development server, published on the loopback interface."""
        return f"http://127.0.0.1:{self.env['SCICAT_DEV_PORT']}"

    @property
    def prometheus_url(self) -> str:
        """Prometheus, published on the loopback interface only."""
        return f"http://127.0.0.1:{self.env['PROMETHEUS_PORT']}"

    @property
    def s3_url(self) -> str:
        """MinIO (stand-in) as the host reaches it: MINIO_EXTERNAL_ENDPOINT of the development stack."""
        return f"http://localhost:{self.env['MINIO_S3_PORT']}"

    def compose(
        self, *args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """`docker compose` on this stack; `env` adds to (and wins over) the stack's settings for this call."""
        env_files = [arg for name in self.env_files for arg in ("--env-file", name)]
        command = ["docker", "compose", "-p", self.project, *env_files, *args]
        result = subprocess.run(
            command, cwd=REPO, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
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

    def service_image(self, service: str) -> str:
        """The image a service runs, as compose resolves it from the env files."""
        return json.loads(self.compose("config", "--format", "json").stdout)["services"][service]["image"]

    def enabled_services(self) -> set[str]:
        return set(self.compose("config", "--services").stdout.split())

    def prefect(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = httpx.request(method, f"{self.prefect_api}{path}", timeout=30, auth=self.prefect_auth, **kwargs)
        response.raise_for_status()
        return response

    def start_deployment_run(self, deployment: str, parameters: dict) -> dict:
        """A run of 'flow/deployment' created through the Prefect API, as an operator starts one in the UI."""
        found = self.prefect("GET", f"/deployments/name/{deployment}").json()
        return self.prefect(
            "POST", f"/deployments/{found['id']}/create_flow_run", json={"parameters": parameters}
        ).json()

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
        logs = self.prefect(
            "POST",
            "/logs/filter",
            json={
                "logs": {"flow_run_id": {"any_": [run["id"]]}},
                "sort": "TIMESTAMP_DESC",
                "limit": 40,
            },
        ).json()
        lines = "\n".join(f"{entry['level']} {entry['message'][:500]}" for entry in reversed(logs))
        return f"{run['name']}: {run['state_name']}: {(run.get('state') or {}).get('message')}\n{lines}"

    def set_variable(self, name: str, value) -> None:
        """Set a Prefect variable (read by flow runs when they start)."""
        self.prefect("PATCH", f"/variables/name/{name}", json={"value": value})

    def lts_host_path(self) -> Path:
        """The LTS root (the volume flow runs mount at `lts_root`) where Docker keeps the local volume on this
        machine: read without a container, fast enough to watch a write in progress."""
        inspect = subprocess.run(
            ["docker", "volume", "inspect", self.env["LTS_VOLUME_NAME"]], capture_output=True, text=True, check=True
        ).stdout
        return Path(json.loads(inspect)[0]["Mountpoint"])

    def scicat_requests(self, since: int = 0) -> list[dict]:
        return httpx.get(f"{self.scicat_url}/dev/requests", params={"since": since}, timeout=30).json()

    def record_timing(self, label: str, seconds: float) -> None:
        TIMINGS.append(f"{label}: {seconds:.0f}s")

    def note(self, line: str) -> None:
        """A figure for the terminal summary."""
        TIMINGS.append(line)

    def prefect_client_settings(self):
        """Prefect's Python client in this process pointed at the stack's server, for the block's duration."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        return temporary_settings(
            {PREFECT_API_URL: self.prefect_api, PREFECT_API_AUTH_STRING: self.secret("prefectauth.txt")}
        )

    def scicat_state(self) -> dict:
        return httpx.get(f"{self.scicat_url}/dev/state", timeout=30).json()

    def secret(self, filename: str) -> str:
        return (self.secrets_dir / filename).read_text().strip()

    def flow_run_container(self, run: dict) -> dict:
        """`docker inspect` of the container a Docker worker started for the run (infrastructure_pid)."""
        pid = run.get("infrastructure_pid") or ""
        assert pid, f"flow run {run['name']} has no infrastructure_pid: no worker started it"
        container_id = pid.rsplit(":", 1)[-1]
        return json.loads(
            subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, check=True).stdout
        )[0]


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


def runbook(kind: str) -> list[str]:
    """The command lines of docs/deployment.md's blocks marked `<!-- runbook -->` (kind "up") or
    `<!-- runbook: reset -->`, in order, as an operator types them."""
    marker = "<!-- runbook -->" if kind == "up" else f"<!-- runbook: {kind} -->"
    blocks = re.findall(re.escape(marker) + r"\n```bash\n(.*?)```", RUNBOOK_DOC.read_text(), flags=re.S)
    assert blocks, f"no {marker} block in {RUNBOOK_DOC}"
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run_runbook(lines: list[str], env: dict[str, str], exports: list[str], one_shots: dict) -> None:
    """Each line run by bash exactly as written, in the repository's top folder, after the `export` lines
    met so far (one shell session, as an operator's). A failing line fails the stack fixture."""
    for line in lines:
        if line.startswith("export "):
            exports.append(line)
            continue
        script = "\n".join(["set -euo pipefail", *exports, line])
        result = _timed(
            line,
            subprocess.run,
            ["bash", "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if " run --rm " in line:
            one_shots[line.split()[-1]] = result
        if result.returncode != 0:
            raise AssertionError(
                f"runbook line `{line}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    yield from running_stack(tmp_path_factory, "archiver-stacktest", runbook("up"), ENV_FILES)


@pytest.fixture(scope="session")
def stack_runner():
    """`running_stack` for a test module's own stack fixture (test_ha.py). Through this fixture, not an import:
    pytest loads this file as the module `conftest`, and only its notes and timings reach the summary."""
    return running_stack


def running_stack(tmp_path_factory, name: str, up: list[str], env_files: tuple[str, ...]):
    """The body of a session-scoped stack fixture: the runbook lines `up`, the Stack, and the reset."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    secrets_dir = tmp_path_factory.mktemp(f"{name}-secrets")
    project = f"{name}-{uuid.uuid4().hex[:8]}"
    proxy_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        # Values in the environment win over the env files: the runbook's commands, run verbatim, get a
        # stack of this session's own, beside a developer's or another session's.
        "COMPOSE_PROJECT_NAME": project,
        "SECRETS_DIR": str(secrets_dir),
        "STACK_NETWORK": project,
        "LTS_VOLUME_NAME": f"{project}-lts",
        "PROXY_HTTP_PORT": str(proxy_port),
        "MINIO_S3_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        "SCICAT_DEV_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        # An image tag of its own: a concurrent session building the runtime image from another
        # checkout cannot change what this stack's flow runs execute. Layers are still shared.
        "ARCHIVER_IMAGE": f"archiver-runtime:{project}",
    }
    stack = Stack(project, env, f"http://127.0.0.1:{proxy_port}", secrets_dir, env_files=env_files)
    exports: list[str] = []
    try:
        run_runbook(up, env, exports, stack.one_shots)
        yield stack
    finally:
        try:
            run_runbook(runbook("reset"), env, exports, stack.one_shots)
        finally:
            leftovers = _leftovers(project, env)
            with contextlib.suppress(Exception):  # only needed after a failed reset: the assertion below says so
                remove_flow_run_containers(env["STACK_NETWORK"])
            stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
            subprocess.run(["docker", "rmi", "--no-prune", env["ARCHIVER_IMAGE"]], capture_output=True)
        assert not leftovers, f"the runbook's reset left {leftovers}"


def _leftovers(project: str, env: dict[str, str]) -> list[str]:
    """Containers, network and LTS volume of the stack that still exist."""

    def ids(*command: str) -> list[str]:
        return subprocess.run(["docker", *command], capture_output=True, text=True, check=True).stdout.split()

    containers = ids("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}") + flow_run_containers(
        project
    )
    networks = ids("network", "ls", "-q", "--filter", f"name=^{env['STACK_NETWORK']}$")
    volumes = ids("volume", "ls", "-q", "--filter", f"name=^{env['LTS_VOLUME_NAME']}$")
    return (
        [f"container {c}" for c in containers] + [f"network {n}" for n in networks] + [f"volume {v}" for v in volumes]
    )


@pytest.fixture(scope="session")
def stack_s3(stack):
    """boto3 client for the stack's S3 (MinIO stand-in) at its published address, as MinIO's root account
    (the tests upload datasets the way an ingestor does, and inspect both buckets)."""
    return s3_client(
        stack.s3_url, VARS.s3.region, S3Credentials(stack.secret("miniouser.txt"), stack.secret("miniopass.txt"))
    )


def flow_run_containers(project: str) -> list[str]:
    """Containers the stack's workers launched for flow runs (on the stack's network, kept after exit)."""
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"network={project}", "--filter", "label=io.prefect.flow-run-id"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


# --- SciCat, the ingestor and the operator, shared by the test modules ---


class Operator:
    """What SciCat, an ingestor and an operator do to the stack, from this machine."""

    def __init__(self, stack, s3):
        self.stack = stack
        self.s3 = s3
        credentials = ScicatCredentials(stack.secret("scicatuser.txt"), stack.secret("scicatpass.txt"))
        self.scicat = ScicatClient(ScicatSection(SCICAT_ENDPOINT=stack.scicat_url), credentials)
        self.originals: dict[str, dict[str, bytes]] = {}  # pid -> path -> content

    # --- ingestor ---

    def ingest_dataset(self, files: int, size: int) -> str:
        """Random files uploaded below the landing-zone prefix, then dataset + origdatablock in SciCat."""
        dataset = self.scicat.create_dataset(
            new_raw_dataset("e2e", "end-to-end dataset", size=files * size, number_of_files=files)
        )
        pid = dataset.pid
        contents = {f"raw/file_{i}.bin": os.urandom(size) for i in range(files)}
        datafiles = []
        for path, data in contents.items():
            self.s3.put_object(Bucket=VARS.s3.landingzone_bucket, Key=landing_prefix(pid) + path, Body=data)
            datafiles.append(
                DataFile(
                    path=path,
                    size=len(data),
                    time=datetime.now(UTC),
                    chk=hashlib.sha256(data).hexdigest(),
                    uid="0",
                    gid="0",
                    perm="644",
                )
            )
        self.scicat.create_origdatablock(
            pid, NewOrigDatablock(size=files * size, chk_alg="sha256", data_file_list=datafiles)
        )
        self.originals[pid] = contents
        return pid

    # --- SciCat ---

    def create_job(self, job_type: str, pids: list[str]) -> tuple[dict, dict]:
        """A job created in SciCat; returns the job document and the flow run its forward to the API started."""
        since = self.stack.scicat_requests()[-1]["seq"] if self.stack.scicat_requests() else 0
        job = self.scicat.create_job(job_type, pids)
        entry = next(
            e
            for e in self.stack.scicat_requests(since)
            if e["method"] == "POST" and e.get("jobId") == job.id and e["path"].endswith("/jobs")
        )
        forward = entry["forward"]
        assert forward.get("status") == 200, f"SciCat's call of the archiver API failed: {forward}"
        assert forward["url"] == "http://archiver-api:8000/api/v1/jobs"
        started = json.loads(forward["answer"])
        return job.to_wire(), started

    def job(self, job_id: str) -> dict:
        return self.stack.scicat_state()["jobs"][job_id]

    def dataset(self, pid: str) -> dict:
        return self.stack.scicat_state()["datasets"][pid]

    def datablocks(self, pid: str) -> list[dict]:
        return [b for b in self.stack.scicat_state()["datablocks"].values() if b["datasetId"] == pid]

    # --- the archiver API through the proxy, from this machine ---

    def post_job_through_proxy(self, job: dict, authorization: str | None) -> httpx.Response:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return httpx.post(f"{self.stack.base_url}/api/v1/jobs", json=job, headers=headers, timeout=60)

    # --- the LTS volume, read by a throwaway container ---

    def lts(self, *command: str) -> str:
        return subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                f"{self.stack.env['LTS_VOLUME_NAME']}:/lts",
                "--entrypoint",
                command[0],
                self.stack.env["ARCHIVER_IMAGE"],
                *command[1:],
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout

    def lts_files(self, pid: str) -> list[str]:
        """The files of the dataset's LTS folder, but for the write lock file (an empty file that stays)."""
        folder = f"/lts/openem-network/datasets/{safe_name(pid)}"
        listing = self.lts("sh", "-c", f"test -d '{folder}' && cd '{folder}' && find . -type f | sort || true")
        return [line.removeprefix("./") for line in listing.split() if line != f"./{LOCK_FILE_NAME}"]

    def landing_zone(self, pid: str) -> list[str]:
        return self._keys(VARS.s3.landingzone_bucket, landing_prefix(pid))

    def retrieval_bucket(self, pid: str) -> list[str]:
        return self._keys(VARS.s3.retrieval_bucket, retrieval_prefix(pid))

    def drop_retrieved_copy(self, pid: str) -> None:
        """Delete the dataset's retrieved copy, so that the next retrieval uploads again instead of reusing it."""
        delete_retrieved(self.s3, VARS.s3.retrieval_bucket, pid)

    def unfinished_uploads(self, pid: str) -> list[str]:
        """Keys of the dataset's multipart uploads to the retrieval bucket that are neither completed nor aborted."""
        answer = self.s3.list_multipart_uploads(Bucket=VARS.s3.retrieval_bucket, Prefix=retrieval_prefix(pid))
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def _keys(self, bucket: str, prefix: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

    # --- Prefect ---

    def wait(self, started: dict, timeout_s: float = 420) -> dict:
        return self.stack.wait_for_flow_run(str(started["uuid"]), timeout_s=timeout_s)

    def flow_run_count(self) -> int:
        return self.stack.prefect("POST", "/flow_runs/count", json={}).json()

    # --- checks ---

    def assert_archived(self, pid: str, job_id: str) -> None:
        """As `assert_archived_whatever_the_store`, and one verified-looking datablock per file on the LTS volume."""
        blocks = self.assert_archived_whatever_the_store(pid, job_id)
        count = len(blocks)
        stem = safe_name(pid)
        expected = sorted(
            [f"datablocks/{stem}_{i:05d}{suffix}" for i in range(count) for suffix in (".tar", ".manifest.json")]
        )
        assert self.lts_files(pid) == expected
        assert {b["archiveId"].rsplit("/", 1)[-1] for b in blocks} == {f"{stem}_{i:05d}.tar" for i in range(count)}

    def assert_archived_whatever_the_store(self, pid: str, job_id: str) -> list[dict]:
        """What an archival shows on any LTS store: job successful, dataset archived in SciCat with one datablock
        per file (datablocks of at most 1 MB: the `operator` fixture) listing the uploaded files, nothing left in
        the landing zone. Returns the datablocks."""
        assert self.job(job_id)["jobStatusMessage"] == "finishedSuccessful"
        lifecycle = self.dataset(pid)["datasetlifecycle"]
        assert lifecycle["archiveStatusMessage"] == "datasetOnArchiveDisk"
        assert (lifecycle["archivable"], lifecycle["retrievable"]) == (False, True)
        blocks = self.datablocks(pid)
        assert len(blocks) == len(self.originals[pid]), blocks
        assert sorted(f["path"] for b in blocks for f in b["dataFileList"]) == sorted(self.originals[pid])
        assert self.landing_zone(pid) == []
        return blocks

    def assert_lts_holds_originals(self, pid: str) -> None:
        """Every registered datablock read back from the LTS volume holds the uploaded files, byte for byte."""
        tars = [(self.stack.lts_host_path() / block["archiveId"]).read_bytes() for block in self.datablocks(pid)]
        self._assert_originals(pid, tars)

    def assert_retrieved(self, pid: str, job_id: str) -> None:
        """Job successful with one download URL per datablock; the downloads (from this machine, through the
        published S3 port) hold the uploaded files, byte for byte."""
        done = self.job(job_id)
        assert done["jobStatusMessage"] == "finishedSuccessful"
        assert self.dataset(pid)["datasetlifecycle"]["retrieveStatusMessage"] == "datasetRetrieved"
        entries = done["jobResultObject"]["result"]
        blocks = {b["archiveId"]: b for b in self.datablocks(pid)}
        assert sorted(e["archiveId"] for e in entries) == sorted(blocks)
        tars = []
        for entry in entries:
            assert entry["datasetId"] == pid
            assert entry["url"].startswith(self.stack.s3_url + "/"), entry["url"]
            download = httpx.get(entry["url"], timeout=120)
            assert download.status_code == 200, download.text[:500]
            assert len(download.content) == entry["size"] == blocks[entry["archiveId"]]["packedSize"]
            tars.append(download.content)
        self._assert_originals(pid, tars)

    def _assert_originals(self, pid: str, tars: list[bytes]) -> None:
        """The tar files' members are the dataset's uploaded files with the checksums SciCat holds for them."""
        checksums = {
            f["path"]: f["chk"]
            for b in self.stack.scicat_state()["origdatablocks"].values()
            if b["datasetId"] == pid
            for f in b["dataFileList"]
        }
        seen: dict[str, bytes] = {}
        for content in tars:
            with tarfile.open(fileobj=io.BytesIO(content)) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        seen[member.name] = tar.extractfile(member).read()
        assert sorted(seen) == sorted(self.originals[pid])
        for path, data in seen.items():
            assert hashlib.sha256(data).hexdigest() == checksums[path], path
            assert data == self.originals[pid][path], path


@pytest.fixture(scope="module")
def operator(stack, stack_s3):
    """The Operator, with datablocks of at most 1 MB for the module (one datablock per file of the tests)."""
    stack.set_variable("archiver_target_size_mb", 1)
    operator = Operator(stack, stack_s3)
    yield operator
    operator.scicat.close()
    stack.set_variable("archiver_target_size_mb", VARS.archiver.target_size_mb)
