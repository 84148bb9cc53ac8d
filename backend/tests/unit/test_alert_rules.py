"""Every alert of backend/docker/prometheus/alerts.yml has a promtool unit test and an entry in docs/monitoring.md
(promtool itself runs them in the stack tier, backend/tests/stack/test_promtool.py)."""

from __future__ import annotations

from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus"


def test_every_alert_has_a_unit_test_and_a_runbook_entry():
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    doc = (PROMETHEUS_DIR.parents[2] / "docs" / "monitoring.md").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert alerts
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert
        assert f"| `{alert}` |" in doc, alert
