"""`archiver dev`, the README's one-command local run: everything works, the UI shows it, and SIGTERM
or Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from archiver import local_services

from tests.browser import rendered_text, screenshot

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def answers(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def test_dev_runs_the_pipeline_shows_it_in_the_ui_and_sigterm_stops_everything(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "archiver.cli", "dev", "--workdir", str(tmp_path / "local"), "--files", "3",
         "--file-size-mb", "1", "--prefect-port", str(local_services.free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        cwd=REPO,  # where a user runs it: beside the compose stack's .env, which must not leak into the UI
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops it all" in line or "run failed" in line:
                break
        output = "".join(lines)
        assert "3 file(s), byte-identical to the originals (sha256)" in output, output
        assert len(re.findall(r"SciCat job \S+: finishedSuccessful", output)) == 2
        assert re.search(r"\[archiving .*: 100%\]", output) and re.search(r"\[retrieving .*: 100%\]", output)
        urls = re.findall(r"(http://127\.0\.0\.1:\d+)", output)
        assert len(set(urls)) >= 4  # Prefect, S3, SciCat, API
        assert all(answers(url) for url in set(urls))
        prefect = re.search(r"Prefect UI +(http://127\.0\.0\.1:\d+)/dashboard", output)[1]
        _check_ui(prefect, tmp_path)
        _check_job_command(output, prefect, tmp_path / "local" / "secrets")

        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:  # a failed check: stop it as a user would, so it takes its services along
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    assert process.returncode == 0, rest
    assert "stopping everything this command started" in rest
    assert not any(answers(url) for url in set(urls))


def _check_ui(prefect: str, tmp_path: Path) -> None:
    """The UI talks to this server's API (not the stack's /prefect-ui/api) and shows the job runs' results."""
    assert httpx.get(f"{prefect}/ui-settings").json()["api_url"] == f"{prefect}/api"
    screenshot(f"{prefect}/dashboard", tmp_path, "dev-dashboard")
    dashboard = rendered_text(f"{prefect}/dashboard", tmp_path / "dashboard", ["Flow Runs"])
    assert "Flow Runs" in dashboard and "Can't connect" not in dashboard, dashboard[:2000]

    [run] = httpx.post(f"{prefect}/api/flow_runs/filter", json={
        "flow_runs": {"name": {"like_": "archive-job-"}}, "limit": 1}).json()
    job_id = run["name"].removeprefix("archive-job-")
    [table] = httpx.post(f"{prefect}/api/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [run["id"]]}, "type": {"any_": ["table"]}}}).json()
    page = f"{prefect}/artifacts/artifact/{table['id']}"
    screenshot(page, tmp_path, "dev-job-summary-artifact")
    text = rendered_text(page, tmp_path / "artifact", [f"Job {job_id}", "archiver-dev-"])
    assert f"Job {job_id}: finishedSuccessful" in text and "archiver-dev-" in text, text[:3000]


def _check_job_command(output: str, prefect: str, secrets_dir: Path) -> None:
    """`archiver job` against the running dev services: a retrieve job from SciCat to download links."""
    scicat = re.search(r"SciCat +(http://127\.0\.0\.1:\d+)", output)[1]
    pid = re.search(r"done: dataset (\S+) was created", output)[1]
    job = subprocess.run(
        [sys.executable, "-m", "archiver.cli", "job", "retrieve", pid, "--scicat-url", scicat,
         "--secrets-dir", str(secrets_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PREFECT_API_URL": f"{prefect}/api"},
    )
    assert job.returncode == 0, job.stdout + job.stderr
    assert re.search(r"SciCat job \S+: finishedSuccessful", job.stdout), job.stdout
    assert re.search(r"\[retrieving .*: 100%\]", job.stdout), job.stdout
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
