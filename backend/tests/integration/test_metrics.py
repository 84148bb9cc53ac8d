"""The metrics exporter (`archiver metrics`) as Prometheus scrapes it: real archive and retrieve flows on the test
Prefect server, moto S3 and an LTS folder, then the exporter's /metrics over HTTP.

The Prefect server is shared by the session, so job counts are checked as differences between two scrapes;
the retrieval bucket and the LTS are this test's own, so their values are checked as they are."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.retrieve import retrieve_datasets_flow

pytestmark = pytest.mark.integration


class Exporter:
    """`archiver metrics` in a subprocess, on a free port it prints."""

    def __init__(self, log_path, *options: str):
        self._log_path = log_path
        self._options = options
        self.process = None
        self.url = None

    def start(self) -> Exporter:
        log = self._log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "archiver.cli", "metrics", "--port", "0", "--slow-cache-s", "0", *self._options],
            stdout=subprocess.PIPE,
            stderr=log,
            env=dict(os.environ),
            text=True,
        )
        line = self.process.stdout.readline()
        match = re.search(r"http://\S+:(\d+)/metrics", line)
        assert match, f"exporter did not start: {line!r}; log {self._log_path.read_text()}"
        self.url = f"http://127.0.0.1:{match.group(1)}/metrics"
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def scrape(self) -> dict[tuple, float]:
        """{(sample name, sorted label pairs): value}."""
        text = httpx.get(self.url, timeout=60).raise_for_status().text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
def exporter(tmp_path, pipeline):
    exporter = Exporter(tmp_path / "metrics.log").start()
    yield exporter
    exporter.stop()


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def dataset_bytes(pipeline, pid: str) -> int:
    return sum(f.size for block in pipeline.scicat.get_origdatablocks(pid) for f in block.data_file_list)


def test_jobs_bytes_and_durations_counted_from_history_and_kept_over_a_restart(pipeline, exporter, tmp_path):
    before = exporter.scrape()
    assert value(before, "archiver_metrics_source_up", source="prefect") == 1
    pid = create_test_dataset_flow(num_files=3, file_size_mb=0.4)
    size = dataset_bytes(pipeline, pid)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    retrieve_datasets_flow(job_id=pipeline.new_job("retrieve", [pid]))
    broken = create_test_dataset_flow(num_files=2, file_size_mb=0.2)
    [victim, *_] = pipeline.landing_keys(broken)
    pipeline.s3.delete_object(Bucket=pipeline.settings.s3.landingzone_bucket, Key=victim)
    assert archive_datasets_flow(job_id=pipeline.new_job("archive", [broken]), return_state=True).is_failed()

    after = exporter.scrape()

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("archiver_jobs_total", job_type="archive", outcome="completed") == 1
    assert grew("archiver_jobs_total", job_type="archive", outcome="failed") == 1
    assert grew("archiver_jobs_total", job_type="retrieve", outcome="completed") == 1
    assert grew("archiver_jobs_total", job_type="retrieve", outcome="failed") == 0
    assert grew("archiver_datasets_total", job_type="archive", outcome="completed") == 1
    assert grew("archiver_datasets_total", job_type="archive", outcome="failed") == 1
    assert grew("archiver_datasets_total", job_type="retrieve", outcome="completed") == 1
    assert grew("archiver_dataset_bytes_total", job_type="archive") == size
    assert grew("archiver_dataset_bytes_total", job_type="retrieve") == size
    assert grew("archiver_job_duration_seconds_count", job_type="archive") == 2
    assert grew("archiver_job_duration_seconds_count", job_type="retrieve") == 1
    assert grew("archiver_job_duration_seconds_sum", job_type="archive") > 0
    assert grew("archiver_job_queue_wait_seconds_count", job_type="archive") == 2

    retrieved = pipeline.s3.list_objects_v2(Bucket=pipeline.settings.s3.retrieval_bucket)["Contents"]
    assert value(after, "archiver_retrieval_bucket_bytes") == sum(o["Size"] for o in retrieved) > size
    assert value(after, "archiver_retrieval_bucket_objects") == len(retrieved)
    usage = shutil.disk_usage(pipeline.lts_root)
    assert value(after, "archiver_lts_size_bytes") == usage.total
    assert abs(value(after, "archiver_lts_free_bytes") - usage.free) < 64 * 2**20
    assert value(after, "archiver_lts_free_space_threshold_ratio") == pytest.approx(0.01)
    for limit in ("LTS_FREE_LIMIT", "MOVE_TO_LTS_LIMIT", "VERIFY_LTS_LIMIT", "LTS_TO_RETRIEVAL_LIMIT"):
        tag = getattr(pipeline_limits(pipeline), limit)
        assert value(after, "archiver_concurrency_slots_limit", tag=tag.tag) == tag.limit
        assert value(after, "archiver_concurrency_slots_dead", tag=tag.tag) == 0

    exporter.stop()
    exporter.start()
    restarted = exporter.scrape()
    counters = [key for key in after if key[0].endswith(("_total", "_count", "_sum", "_bucket"))]
    assert counters
    dropped = {key: (after[key], restarted.get(key)) for key in counters if restarted.get(key, 0) < after[key]}
    assert dropped == {}


def pipeline_limits(pipeline):
    from archiver.config.limits import load_limits_file

    return load_limits_file(pipeline.limits_file)


def post_heartbeat(flow_run_id, occurred: datetime) -> None:
    """A heartbeat event of the run, as its process would send it, dated `occurred`."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    event = Event(
        occurred=occurred,
        event="prefect.flow-run.heartbeat",
        id=uuid.uuid4(),
        resource={"prefect.resource.id": f"prefect.flow-run.{flow_run_id}"},
    )
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")]).raise_for_status()


def test_a_running_job_without_recent_heartbeat_is_reported_stuck(pipeline, exporter):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    window = pipeline.settings.archiver.zombie_window_s
    now = datetime.now(UTC)
    before = value(exporter.scrape(), "archiver_flow_runs_stuck", flow="archive_datasetlist")
    with get_client(sync_client=True) as client:
        stuck = client.create_flow_run(archive_datasets_flow, parameters={"job_id": "stuck"}, state=Running())
        alive = client.create_flow_run(archive_datasets_flow, parameters={"job_id": "alive"}, state=Running())
        try:
            post_heartbeat(stuck.id, now - timedelta(seconds=window + 60))
            post_heartbeat(alive.id, now)
            deadline = time.monotonic() + 30  # events are stored asynchronously
            while (
                reported := value(exporter.scrape(), "archiver_flow_runs_stuck", flow="archive_datasetlist")
            ) < before + 1 and time.monotonic() < deadline:
                time.sleep(1)
            assert reported == before + 1
            client.set_flow_run_state(stuck.id, Completed(), force=True)
            assert value(exporter.scrape(), "archiver_flow_runs_stuck", flow="archive_datasetlist") == before
        finally:
            for run in (stuck, alive):
                client.set_flow_run_state(run.id, Completed(), force=True)


def test_crashes_stay_counted_after_a_restart_when_the_run_went_on_to_another_state(pipeline, exporter):
    """A run marked Crashed may reach another state later without Prefect counting a new attempt: the recovery
    sets a live one Running again, a woken process or an operator sets it Failed. The crash must stay counted
    when the exporter reads the history afresh (Prefect keeps the first end time of a run that goes from one
    final state to another)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Crashed, Failed, Running

    from archiver.config.automations import ZOMBIE_MESSAGE_PREFIX
    from archiver.flows.recovery import set_running_again

    outcomes = ("completed", "failed", "crashed")

    def jobs(scrape):
        return {o: value(scrape, "archiver_jobs_total", job_type="archive", outcome=o) for o in outcomes}

    before = jobs(exporter.scrape())
    with get_client(sync_client=True) as client:
        revived, woken = (
            client.create_flow_run(archive_datasets_flow, parameters={"job_id": name}, state=Running())
            for name in ("revived", "woken")
        )
        for run in (revived, woken):
            client.set_flow_run_state(run.id, Crashed(message=f"{ZOMBIE_MESSAGE_PREFIX} 90 s"), force=True)
        exporter.scrape()
        set_running_again(client, revived.id)
        assert client.set_flow_run_state(revived.id, Completed()).status.value == "ACCEPT"
        client.set_flow_run_state(woken.id, Failed(message="woke up after its crash"), force=True)
    after = jobs(exporter.scrape())
    assert {o: after[o] - before[o] for o in outcomes} == {"completed": 1, "failed": 1, "crashed": 2}

    exporter.stop()
    exporter.start()
    assert jobs(exporter.scrape()) == after


FOLD_AFTER_S = 5


def test_counters_outlive_the_runs_prefect_deletes_from_its_history(pipeline, tmp_path):
    """Prefect's database vacuum deletes flow runs past its retention; the exporter folds runs older than
    --fold-after-hours into totals kept in Prefect, so after such a deletion and a restart no counter drops."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Crashed, Failed, Running

    from archiver.metrics.folding import BLOCK_NAME, ArchiverFoldedMetrics

    exporter = Exporter(tmp_path / "metrics.log", "--fold-after-hours", str(FOLD_AFTER_S / 3600)).start()
    outcomes = ("completed", "failed", "crashed")

    def jobs(scrape):
        return {o: value(scrape, "archiver_jobs_total", job_type="archive", outcome=o) for o in outcomes}

    try:
        before = jobs(exporter.scrape())
        with get_client(sync_client=True) as client:
            runs = [
                client.create_flow_run(archive_datasets_flow, parameters={"job_id": f"old-{o}"}, state=Running())
                for o in outcomes
            ]
            for run, state in zip(runs, (Completed(), Failed(), Crashed()), strict=True):
                client.set_flow_run_state(run.id, state, force=True)
            counted = jobs(exporter.scrape())
            assert {o: counted[o] - before[o] for o in outcomes} == dict.fromkeys(outcomes, 1)
            time.sleep(FOLD_AFTER_S + 1)
            assert jobs(exporter.scrape()) == counted  # folded now, still counted once
            for run in runs:  # as Prefect's vacuum does once their end is past its retention
                client.delete_flow_run(run.id)
        assert jobs(exporter.scrape()) == counted
        exporter.stop()
        exporter.start()
        assert jobs(exporter.scrape()) == counted
    finally:
        exporter.stop()
        ArchiverFoldedMetrics.delete(BLOCK_NAME)
