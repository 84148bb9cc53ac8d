"""A full LTS fails the dataset at the first datablock without room: the LTS is a small tmpfs mounted for the
test (root only), the archive job runs for real."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime

import pytest

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from tests import lts_layout
from tests.integration.task_history import tagged_task_runs_since

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def small_filesystem(path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem as the LTS needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_lts_fails_the_dataset_at_once_keeping_what_was_verified(pipeline):
    pipeline.set_settings(ARCHIVER_TARGET_SIZE_MB=1, LTS_FREE_SPACE_PERCENTAGE=1)
    pid = create_test_dataset_flow(num_files=6, file_size_mb=0.9)  # six datablocks of ~0.9 MiB
    with small_filesystem(pipeline.lts_root, "2600k"):  # room for two of them
        since = datetime.now(UTC)
        job_id = pipeline.new_job("archive", [pid])
        start = time.monotonic()
        with pytest.raises(Exception, match="failed"):
            archive_datasets_flow(job_id=job_id)
        seconds = time.monotonic() - start

        assert pipeline.job(job_id)["jobStatusMessage"] == "finishedUnsuccessful"
        lifecycle = pipeline.scicat.get_dataset(pid).datasetlifecycle
        assert lifecycle.archive_status_message == "scheduleArchiveJobFailed"
        assert "No space left on device" in str(lifecycle.archive_return_message)
        folder = lts_layout.datablocks_folder(pipeline.lts_root, pid)
        names = sorted(p.name for p in folder.iterdir())
        assert not any(n.endswith(".partial") for n in names)
        assert 1 <= sum(n.endswith(".tar") for n in names) <= 2  # verified ones stay for a re-run
        writes = tagged_task_runs_since("move-datablocks-to-lts", "write ", since)
    assert all(run.run_count <= 1 for run in writes), [(r.name, r.run_count) for r in writes]  # never retried
    assert len(writes) <= 4  # the datablocks after the first without room are not tried
    assert len(pipeline.landing_keys(pid)) == 6
    assert pipeline.scicat.get_datablocks(pid) == []
    print(f"full LTS: job final in SciCat {seconds:.1f} s after it started")
