"""Retrieval from the cold S3 store, at the flow level: the restores of every datablock a job reads are asked
for at once and waited for, each datablock's state is shown in the dataset run's artifact and the datablocks
waited for in the metrics; a restore that never finishes fails the job as a system error naming every datablock
still frozen; concurrent jobs of one dataset restore each datablock once.

Real Prefect server, SciCat development server, SeaweedFS behind the cold tier stand-in (devtools/cold_s3.py);
each test starts from datablocks of which no restored copy is left."""

from __future__ import annotations

import contextvars
import json
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from archiver.config.deployments import RETRIEVAL
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.artifact_keys import artifact_key
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.local_services import poll_until
from tests.integration.served import start_served, wait_until_final
from tests.integration.test_flows import job_of, lifecycle_of, new_dataset
from tests.integration.test_metrics import Exporter, value

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("lts_backend", ["s3"], indirect=True)]

WAITING = "archiver_datablocks_waiting_for_restore"


def archived_and_frozen(pipeline, lts_backend, num_files: int = 3) -> tuple[str, list[str]]:
    """A dataset of `num_files` datablocks archived to the cold store, none of them restored."""
    proxy, _ = lts_backend
    pid = new_dataset(num_files, 0.8)  # a datablock per file (ARCHIVER_TARGET_SIZE_MB = 1)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    archive_ids = sorted(d.archive_id for d in pipeline.scicat.get_datablocks(pid))
    assert len(archive_ids) == num_files
    proxy.tier.expire_restores()
    return pid, archive_ids


def restore_requests(lts_backend, since: int = 0) -> list[str]:
    proxy, bucket = lts_backend
    return [key for b, key, _ in proxy.tier.restore_requests[since:] if b == bucket]


def artifact_versions(key: str) -> list[list[dict]]:
    """The rows of every version of the table artifact `key`, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )
    return [json.loads(a.data) if isinstance(a.data, str) else a.data for a in reversed(found)]


def test_a_retrieval_asks_every_restore_at_once_waits_for_them_and_shows_each_datablock(
    pipeline, lts_backend, tmp_path
):
    proxy, _ = lts_backend
    pid, archive_ids = archived_and_frozen(pipeline, lts_backend)
    proxy.tier.restore_delay_s = 8.0
    exporter = Exporter(tmp_path / "metrics.log").start()
    try:
        before = value(exporter.scrape(), WAITING)
        asked_from = len(proxy.tier.restore_requests)
        job_id = pipeline.new_job("retrieve", [pid])
        with ThreadPoolExecutor(1) as pool:
            # In this test's Prefect settings (a context variable): the pool's thread gets a copy of the context.
            retrieve = partial(retrieve_datasets_flow, job_id=job_id, return_state=True)
            running = pool.submit(contextvars.copy_context().run, retrieve)
            started = time.monotonic()
            poll_until(
                lambda: value(exporter.scrape(), WAITING) == before + len(archive_ids),
                timeout=60,
                interval=0.3,
                what="the metrics to show the datablocks waiting for their restores",
            )
            # Asked all at once: every restore is under way before the first could be done.
            assert sorted(restore_requests(lts_backend, asked_from)) == archive_ids
            assert time.monotonic() - started < proxy.tier.restore_delay_s
            state = running.result(timeout=180)
        waited = time.monotonic() - started
        after = value(exporter.scrape(), WAITING)
    finally:
        exporter.stop()

    assert state.is_completed(), state.message
    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedSuccessful"
    assert waited >= proxy.tier.restore_delay_s - 1
    assert sorted(restore_requests(lts_backend, asked_from)) == archive_ids  # once each, no more
    assert after == before  # the run ended: nothing waits
    versions = artifact_versions(artifact_key("datablocks-retrieved", pid))
    shown = [{row["datablock"]: row["state"] for row in rows} for rows in versions]
    assert dict.fromkeys(archive_ids, "restore requested") in shown
    assert shown[-1] == dict.fromkeys(archive_ids, "read")
    assert all(set(states) == set(archive_ids) for states in shown)


def test_a_restore_that_never_finishes_fails_the_job_as_a_system_error_naming_every_frozen_datablock(
    pipeline, lts_backend
):
    proxy, bucket = lts_backend
    pid, archive_ids = archived_and_frozen(pipeline, lts_backend)
    proxy.tier.restores_fail = True
    pipeline.set_vars("lts", LTS_RESTORE_TIMEOUT_HOURS=0.002)  # 7.2 s
    asked_from = len(proxy.tier.restore_requests)
    job_id = pipeline.new_job("retrieve", [pid])

    started = time.monotonic()
    state = retrieve_datasets_flow(job_id=job_id, return_state=True)
    took = time.monotonic() - started

    assert state.is_failed()
    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedUnsuccessful"  # a system error, not the user's
    message = job["jobResultObject"]["message"]
    assert "LTS error" in message and "LTS_RESTORE_TIMEOUT_HOURS" in message
    assert f"{len(archive_ids)} datablocks are" in message
    for archive_id in archive_ids:
        assert f"s3://{bucket}/{archive_id}" in message
    lifecycle = lifecycle_of(pipeline, pid)
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
    assert all(archive_id in lifecycle["retrieveReturnMessage"] for archive_id in archive_ids)
    assert pipeline.retrieval_keys(pid) == []
    # One deadline, not one per datablock nor tried again: each restore asked once.
    assert sorted(restore_requests(lts_backend, asked_from)) == archive_ids
    assert 7 <= took < 40
    print(f"\nrestores never finishing: the job failed {took:.1f} s after it started (deadline 7.2 s)")


def test_two_concurrent_retrievals_of_one_dataset_restore_each_datablock_once(pipeline, lts_backend, serve_deployments):
    """Two jobs run by `archiver serve` in processes of their own, as flow-run containers: S3 answers a request
    for a restore under way 409 RestoreAlreadyInProgress, and a readable copy is not restored again."""
    proxy, bucket = lts_backend
    pid, archive_ids = archived_and_frozen(pipeline, lts_backend, num_files=2)
    proxy.tier.restore_delay_s = 5.0
    answered_from = len(proxy.tier.restore_answers)
    serve_deployments()
    jobs = [pipeline.new_job("retrieve", [pid]) for _ in range(2)]

    runs = [start_served(RETRIEVAL.deployment.full_name, job_id) for job_id in jobs]
    finished = [wait_until_final(run.id, timeout=240) for run in runs]

    assert [run.state.type.value for run in finished] == ["COMPLETED", "COMPLETED"]
    first, second = finished
    assert first.start_time < second.end_time and second.start_time < first.end_time  # they did run at once
    assert [job_of(pipeline, job_id)["jobStatusMessage"] for job_id in jobs] == ["finishedSuccessful"] * 2
    answers = [(key, status) for b, key, status in proxy.tier.restore_answers[answered_from:] if b == bucket]
    started = sorted(key for key, status in answers if status in (200, 202))  # 200: a readable copy restored again
    assert started == archive_ids  # one restore each; any other request found it under way (409)
    assert {status for _, status in answers} <= {202, 409}
    print(f"\ntwo concurrent jobs: {len(answers)} restore request(s) for {len(archive_ids)} datablocks")


def test_a_retrieval_the_bucket_has_no_room_for_asks_for_no_restore(pipeline, lts_backend):
    """The retrieval bucket's budget is checked before restores are asked for: they take hours and are billed."""
    pid, _ = archived_and_frozen(pipeline, lts_backend, num_files=2)
    pipeline.set_settings(S3_RETRIEVAL_BUDGET_GB=0.0001)  # 107374 bytes; the dataset needs about 1.6 MB
    asked_from = len(lts_backend[0].tier.restore_requests)
    job_id = pipeline.new_job("retrieve", [pid])

    state = retrieve_datasets_flow(job_id=job_id, return_state=True)

    assert state.is_failed()
    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"  # try later: nothing is broken
    assert "S3_RETRIEVAL_BUDGET_GB" in job["jobResultObject"]["message"]
    assert restore_requests(lts_backend, asked_from) == []
