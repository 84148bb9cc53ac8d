"""`archiver dev`, the README's one-command local run: everything works, Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from archiver import local_services

pytestmark = pytest.mark.integration


def answers(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def test_dev_runs_the_pipeline_and_ctrl_c_stops_everything(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "archiver.cli", "dev", "--workdir", str(tmp_path / "local"), "--files", "3",
         "--file-size-mb", "1", "--prefect-port", str(local_services.free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops it all" in line or "run failed" in line:
                break
        output = "".join(lines)
        assert "3 file(s), byte-identical to the originals (sha256)" in output, output
        assert output.count(": finishedSuccessful") == 2
        assert re.search(r"\[archiving .*: 100%\]", output) and re.search(r"\[retrieving .*: 100%\]", output)
        urls = re.findall(r"(http://127\.0\.0\.1:\d+)", output)
        assert len(set(urls)) >= 4  # Prefect, S3, SciCat, API
        assert all(answers(url) for url in set(urls))

        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    assert "stopping everything this command started" in rest
    assert not any(answers(url) for url in set(urls))
