"""Where a job's seconds go, read from Prefect's history of a run a runner executed (issue 16, item 3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.timeline import job_phases
from tests.integration.served import start_served_archival, wait_until_final

pytestmark = pytest.mark.integration


def test_the_phases_of_a_served_archive_job_cover_its_whole_time(pipeline, serve_deployments):
    pid = create_test_dataset_flow(num_files=2, file_size_mb=0.5)
    serve_deployments()
    created = datetime.now(UTC)
    job_id = pipeline.new_job("archive", [pid])
    run = start_served_archival(job_id)
    final = wait_until_final(run.id)
    assert final.state.is_completed(), final.state

    phases = {p.name: p.seconds for p in job_phases(run.id, created)}
    assert all(seconds >= 0 for seconds in phases.values()), phases
    assert sum(phases.values()) == pytest.approx((final.end_time - created).total_seconds(), abs=0.01)
    # The runner started a process for the run, the dataset subflow's data tasks ran, SciCat was told.
    assert phases["picked up -> flow running (process/container start)"] > 0
    assert phases["data tasks (S3, LTS)"] > 0
    assert phases["SciCat calls (tasks), outside data tasks"] > 0
