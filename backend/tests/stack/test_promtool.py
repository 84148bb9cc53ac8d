"""The Prometheus configuration and alert rules of backend/docker/prometheus/, checked by the promtool of the
stack's Prometheus image: the syntax (`check config`, `check rules`) and each alert firing, or staying quiet,
on the series of alerts_test.yml (`test rules`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus"
pytestmark = [pytest.mark.stack]


def promtool(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--user",
            "nobody",
            "--entrypoint",
            "promtool",
            "-v",
            f"{PROMETHEUS_DIR}:/rules:ro",
            "-w",
            "/rules",
            stack.service_image("prometheus"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    "args",
    [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")],
)
def test_promtool_accepts_the_configuration_and_every_alert_test_passes(stack, args):
    result = promtool(stack, *args)
    assert result.returncode == 0, result.stdout + result.stderr
