"""Metrics and alerts in the stack (issue 18): after an archive and a retrieval, Prometheus (its HTTP API) holds the
job, byte and duration series with the right values; a failed job and a killed run make their alerts fire; a
restart of archiver-metrics resets no counter. Values are checked as differences from before the jobs (other
test modules share the stack)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from archiver.config.settings import load_vars_file
from tests.stack.faults import crash_retries, poll, wait_mid_archive_write
from tests.stack.test_faults import kill_flow_run_container

pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[3]
VARS = load_vars_file(REPO / "prefect-vars.toml")

FILES, FILE_SIZE = 3, 2 * 1024 * 1024
# Prometheus scrapes every 15 s and evaluates rules every 15 s (backend/docker/prometheus/prometheus.yml).
SEEN_S = 120


def query(stack, promql: str) -> dict[tuple, float]:
    """An instant query: {sorted label pairs without __name__/instance/job: value}."""
    answer = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": promql}, timeout=30).raise_for_status()
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "instance", "job"))): float(
            r["value"][1]
        )
        for r in answer.json()["data"]["result"]
    }


def scalar(stack, promql: str) -> float:
    values = list(query(stack, promql).values())
    return values[0] if values else 0.0


def firing(stack, alert: str) -> list[dict]:
    alerts = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=30).raise_for_status().json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def changes(stack, metric: str, labels: dict, minutes: int = 30) -> list[str]:
    """The series' values over the last minutes, one "HH:MM:SS value" per change."""
    selector = metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    end = time.time()
    answer = httpx.get(
        f"{stack.prometheus_url}/api/v1/query_range",
        timeout=30,
        params={"query": selector, "start": end - 60 * minutes, "end": end, "step": 15},
    ).raise_for_status()
    seen, last = [], None
    for series in answer.json()["data"]["result"]:
        for at, value in series["values"]:
            if value != last:
                seen.append(f"{time.strftime('%H:%M:%S', time.gmtime(at))} {value}")
                last = value
    return seen


def jobs(stack, job_type: str, outcome: str) -> float:
    return scalar(stack, f'archiver_jobs_total{{job_type="{job_type}", outcome="{outcome}"}}')


def scraped_after_now(stack) -> None:
    """Wait for a scrape of archiver-metrics that began after this call, so that the jobs of earlier tests, some
    ended just now, are in the counters a baseline reads (otherwise they show up in the difference)."""
    now = time.time()
    poll(lambda: scalar(stack, 'timestamp(up{job="archiver"})') > now + 1, SEEN_S, "a scrape after the earlier jobs")


def test_prometheus_scrapes_the_exporter(stack):
    poll(lambda: scalar(stack, 'up{job="archiver"}') == 1, SEEN_S, "archiver-metrics scraped by Prometheus")
    sources = query(stack, "archiver_metrics_source_up")
    assert sources == {(("source", s),): 1.0 for s in ("prefect", "lts", "s3")}
    threshold = VARS.lts.free_space_percentage / 100
    assert scalar(stack, "archiver_lts_free_space_threshold_ratio") == pytest.approx(threshold)


def test_archive_and_retrieve_show_in_prometheus_with_their_bytes(stack, operator):
    poll(lambda: scalar(stack, 'up{job="archiver"}') == 1, SEEN_S, "archiver-metrics scraped by Prometheus")
    scraped_after_now(stack)
    before = {(t, o): jobs(stack, t, o) for t in ("archive", "retrieve") for o in ("completed", "failed")}
    bytes_before = {
        t: scalar(stack, f'archiver_dataset_bytes_total{{job_type="{t}"}}') for t in ("archive", "retrieve")
    }
    durations_before = scalar(stack, 'archiver_job_duration_seconds_count{job_type="archive"}')
    pid = operator.ingest_dataset(FILES, FILE_SIZE)
    job, started = operator.create_job("archive", [pid])
    assert operator.wait(started)["state_type"] == "COMPLETED"
    job, started = operator.create_job("retrieve", [pid])
    assert operator.wait(started)["state_type"] == "COMPLETED"

    expected = {
        ("archive", "completed"): 1,
        ("retrieve", "completed"): 1,
        ("archive", "failed"): 0,
        ("retrieve", "failed"): 0,
    }
    poll(
        lambda: all(jobs(stack, t, o) - before[(t, o)] == n for (t, o), n in expected.items()),
        SEEN_S,
        "both jobs counted in Prometheus",
    )
    for job_type in ("archive", "retrieve"):
        grown = scalar(stack, f'archiver_dataset_bytes_total{{job_type="{job_type}"}}') - bytes_before[job_type]
        assert grown == FILES * FILE_SIZE, job_type
    assert scalar(stack, 'archiver_job_duration_seconds_count{job_type="archive"}') == durations_before + 1
    assert scalar(stack, 'archiver_job_duration_seconds_sum{job_type="archive"}') > 0
    assert scalar(stack, 'archiver_job_queue_wait_seconds_count{job_type="retrieve"}') >= 1
    # The bucket's size is listed at most every --slow-cache-s (60 s): it may trail the jobs by a scrape or two.
    poll(
        lambda: scalar(stack, "archiver_retrieval_bucket_bytes") >= FILES * FILE_SIZE,
        SEEN_S,
        "the retrieved datablocks counted in the retrieval bucket's size",
    )

    counters = query(stack, '{__name__=~"archiver_(jobs|datasets|dataset_bytes)_total"}')
    stack.compose("restart", "archiver-metrics")
    time.sleep(20)  # one scrape of the restarted exporter
    poll(lambda: scalar(stack, 'up{job="archiver"}') == 1, SEEN_S, "restarted archiver-metrics scraped")
    poll(
        lambda: scalar(stack, 'time() - timestamp(archiver_jobs_total{job_type="archive", outcome="completed"})') < 15,
        SEEN_S,
        "a scrape after the restart",
    )
    # One metric at a time: resets() drops the name, so series of different counters would collide.
    for counter in ("archiver_jobs_total", "archiver_datasets_total", "archiver_dataset_bytes_total"):
        went_down = query(stack, f"resets({counter}[30m]) > 0")
        assert not went_down, {labels: changes(stack, counter, dict(labels)) for labels in went_down}
    after = query(stack, '{__name__=~"archiver_(jobs|datasets|dataset_bytes)_total"}')
    assert {k: v for k, v in counters.items() if after.get(k, 0) < v} == {}


def test_a_failed_job_fires_its_alert(stack, operator, stack_s3):
    poll(lambda: scalar(stack, 'up{job="archiver"}') == 1, SEEN_S, "archiver-metrics scraped by Prometheus")
    scraped_after_now(stack)
    failed = 'archiver_jobs_total{job_type="archive", outcome="failed"}'
    before = scalar(stack, failed)
    pid = operator.ingest_dataset(2, 1024)
    [victim, *_] = operator.landing_zone(pid)
    stack_s3.delete_object(Bucket=VARS.s3.landingzone_bucket, Key=victim)
    job, started = operator.create_job("archive", [pid])
    assert operator.wait(started)["state_type"] == "FAILED"

    poll(lambda: scalar(stack, failed) == before + 1, SEEN_S, "the failed archive job counted")
    # Earlier tests of the shared stack may have failed jobs of either type within the alert's hour.
    poll(
        lambda: [a for a in firing(stack, "ArchiverJobFailed") if a["labels"]["job_type"] == "archive"],
        SEEN_S,
        "ArchiverJobFailed firing for archive jobs",
    )


def test_a_killed_run_fires_its_alert(stack, operator):
    poll(lambda: scalar(stack, 'up{job="archiver"}') == 1, SEEN_S, "archiver-metrics scraped by Prometheus")
    pid = operator.ingest_dataset(6, 16 * 1024 * 1024)
    crashed = 'archiver_jobs_total{job_type="archive", outcome="crashed"}'
    before = scalar(stack, crashed)
    with crash_retries(stack, 0):
        job, started = operator.create_job("archive", [pid])
        run_id = str(started["uuid"])
        wait_mid_archive_write(stack, pid, run_id)
        kill_flow_run_container(stack, run_id)
        assert operator.wait(started)["state_type"] == "CRASHED"

        # This crash counted (earlier tests' crashes, of retrievals too, may have the alert firing already).
        poll(lambda: scalar(stack, crashed) == before + 1, SEEN_S, "the killed archive run counted as crashed")
        poll(
            lambda: [a for a in firing(stack, "ArchiverJobCrashed") if a["labels"]["job_type"] == "archive"],
            SEEN_S,
            "ArchiverJobCrashed firing for archive jobs",
        )
