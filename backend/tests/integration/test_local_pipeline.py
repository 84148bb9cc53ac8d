"""`archiver dev`, the README's one-command local run: everything works, the UI shows it, and SIGTERM
or Ctrl-C leaves nothing running."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import httpx
import pytest

from archiver import local_services
from tests.browser import page_text, prefect_ui, screenshot

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def answers(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


class Terminal:
    """A pseudo-terminal of 120 x 40 a command runs in, as in a person's terminal window."""

    def __init__(self, command: list[str], **popen):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, **popen)
        os.close(slave)
        self._master = master
        self.raw = ""

    def read_until(self, *markers: str, timeout: float = 600) -> str:
        """What the terminal showed (escape sequences removed) once one of `markers` appeared, or at the end."""
        deadline = time.monotonic() + timeout
        while not any(m in self.text() for m in markers) and time.monotonic() < deadline:
            ready, _, _ = select.select([self._master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # the command ended and closed the terminal
                    break
                if not chunk:
                    break
                self.raw += chunk.decode(errors="replace")
        return self.text()

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", self.raw).replace("\r", "\n")

    def close(self) -> None:
        os.close(self._master)


def _without_prefect_settings() -> dict[str, str]:
    """This environment without the test session's Prefect server and credentials."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def test_dev_runs_the_pipeline_shows_it_in_the_ui_and_sigterm_stops_everything(tmp_path):
    terminal = Terminal(
        [
            sys.executable,
            "-m",
            "archiver.cli",
            "dev",
            "--workdir",
            str(tmp_path / "local"),
            "--files",
            "3",
            "--file-size-mb",
            "4",
            "--prefect-port",
            str(local_services.free_port()),
        ],
        env={**_without_prefect_settings(), "TERM": "xterm-256color"},
        cwd=REPO,  # where a user runs it: beside the compose stack's .env, which must not leak into the UI
    )
    process = terminal.process
    try:
        output = terminal.read_until("Ctrl-C stops it all", "run failed")
        assert "3 file(s), byte-identical to the originals (sha256)" in output, output
        assert len(re.findall(r"SciCat job \S+: finishedSuccessful", output)) == 2
        # The terminal view: a bar per dataset with bytes done/total, its rate, and the summary table.
        for verb in ("archiving", "retrieving"):
            assert re.search(verb + r" \S+.*━.* (\d+\.\d+)/\1 MB", output), output
        assert "MB/s" in output and "┃ dataset" in output and "│ done" in output, output
        urls = re.findall(r"(http://127\.0\.0\.1:\d+)", output)
        assert len(set(urls)) >= 4  # Prefect, S3, SciCat, API
        assert all(answers(url) for url in set(urls))
        prefect = re.search(r"Prefect UI +(http://127\.0\.0\.1:\d+)/dashboard", output)[1]
        _check_ui(prefect, tmp_path / "local" / "secrets", tmp_path)
        _check_job_command(output, prefect, tmp_path / "local" / "secrets")

        process.send_signal(signal.SIGTERM)
        process.wait(120)
        rest = terminal.read_until("stopping everything", timeout=30)
    finally:
        if process.poll() is None:  # a failed check: stop it as a user would, so it takes its services along
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        terminal.close()
    assert process.returncode == 0, rest
    assert "stopping everything this command started" in rest
    assert not any(answers(url) for url in set(urls))


def _check_ui(prefect: str, secrets_dir: Path, tmp_path: Path) -> None:
    """The UI asks for the login, talks to this server's API (not the stack's /prefect-ui/api) and shows the
    job runs' results."""
    auth_string = (secrets_dir / "prefectauth.txt").read_text().strip()
    assert httpx.get(f"{prefect}/ui-settings").json()["api_url"] == f"{prefect}/api"
    assert httpx.post(f"{prefect}/api/flow_runs/filter", json={}).status_code == 401
    api = httpx.Client(base_url=f"{prefect}/api", auth=tuple(auth_string.split(":", 1)), timeout=30)
    [run] = api.post("/flow_runs/filter", json={"flow_runs": {"name": {"like_": "archive-job-"}}, "limit": 1}).json()
    job_id = run["name"].removeprefix("archive-job-")
    [table] = api.post(
        "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}, "type": {"any_": ["table"]}}}
    ).json()

    with prefect_ui(prefect, auth_string) as page:
        dashboard = page_text(page, f"{prefect}/dashboard", ["Flow Runs"])
        screenshot(page, tmp_path, "dev-dashboard")
        assert "Flow Runs" in dashboard and "Can't connect" not in dashboard, dashboard[:2000]

        text = page_text(page, f"{prefect}/artifacts/artifact/{table['id']}", [f"Job {job_id}", "archiver-dev-"])
        screenshot(page, tmp_path, "dev-job-summary-artifact")
        assert f"Job {job_id}: finishedSuccessful" in text and "archiver-dev-" in text, text[:3000]


def _check_job_command(output: str, prefect: str, secrets_dir: Path) -> None:
    """`archiver job` against the running dev services: a retrieve job from SciCat to download links."""
    scicat = re.search(r"SciCat +(http://127\.0\.0\.1:\d+)", output)[1]
    pid = re.search(r"done: dataset (\S+) was created", output)[1]
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "archiver.cli",
            "job",
            "retrieve",
            pid,
            "--scicat-url",
            scicat,
            "--secrets-dir",
            str(secrets_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **_without_prefect_settings(),
            "PREFECT_API_URL": f"{prefect}/api",
            "PREFECT_API_AUTH_STRING_FILE": str(secrets_dir / "prefectauth.txt"),
        },
    )
    assert job.returncode == 0, job.stdout + job.stderr
    assert re.search(r"SciCat job \S+: finishedSuccessful", job.stdout), job.stdout
    # `archiver dev` retrieved this dataset moments ago: the job reuses that copy (issue 17), uploads nothing and so
    # shows no progress; its links are printed and download.
    assert not re.search(r"\[retrieving .*: \d+%\]", job.stdout), job.stdout
    links = re.findall(r"^download .*: (http://\S+)$", job.stdout, flags=re.M)
    assert links and all(httpx.get(link).status_code == 200 for link in links), job.stdout
    assert "outcome" in job.stdout and "done" in job.stdout  # the summary table


def test_services_die_with_a_killed_parent(tmp_path):
    """SIGKILL leaves no chance to clean up: the services get SIGTERM from the kernel instead."""
    script = (
        "import sys, time; from pathlib import Path; from archiver import local_services as ls\n"
        "with ls.service('sleeper', [sys.executable, '-c', 'import time; time.sleep(300)'], 'http://x', None,\n"
        "                Path(sys.argv[1]) / 'sleeper.log') as s:\n"
        "    print(s.process.pid, flush=True); time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert os.path.exists(f"/proc/{child}")
    parent.kill()
    parent.wait()
    local_services.poll_until(lambda: not _alive(child), 10, "the service to end with its parent")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
