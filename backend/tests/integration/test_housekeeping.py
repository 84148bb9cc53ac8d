"""Pruning discarded/ on the LTS: the `archiver lts prune-discarded` command and the `prune_discarded` flow,
against a real LTS folder and (for the flow) the test Prefect server's variables and artifacts."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from archiver.flows.maintenance import prune_discarded_flow
from archiver.packing import naming
from tests import lts_layout

pytestmark = pytest.mark.integration


def lay_out(lts_root):
    """Per dataset: a datablock, a discarded folder 40 days old and one 2 days old."""
    now = datetime.now(UTC)
    folders = {}
    for pid in ("20.500.11935/prune-a", "20.500.11935/prune-b"):
        tar = lts_layout.datablock_path(lts_root, naming.archive_id(pid, 0))
        tar.parent.mkdir(parents=True)
        tar.write_bytes(b"registered" * 100)
        for age in (40, 2):
            folder = (
                lts_layout.dataset_folder(lts_root, pid)
                / "discarded"
                / (now - timedelta(days=age)).strftime("%Y%m%dT%H%M%S.%fZ")
            )
            folder.mkdir(parents=True)
            (folder / tar.name).write_bytes(b"x" * 1000 * age)
            folders[pid, age] = folder
    return folders


def prune_command(pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "archiver.cli",
            "lts",
            "prune-discarded",
            "--vars",
            str(pipeline.vars_file),
            "--secrets-dir",
            str(pipeline.secrets_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_prune_command_reports_and_deletes_only_old_discarded_folders(pipeline):
    folders = lay_out(pipeline.lts_root)

    dry = prune_command(pipeline, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would delete ") == 3  # two folders and the summary line
    assert "0 kept" in dry.stdout
    assert "older than 30 day(s), 80000 bytes" in dry.stdout
    assert all(folder.exists() for folder in folders.values())

    real = prune_command(pipeline)
    assert real.returncode == 0, real.stderr
    for (pid, age), folder in folders.items():
        assert folder.exists() == (age == 2)
        assert (f"deleted {folder} " in real.stdout) == (age == 40)
        assert (
            lts_layout.datablock_path(pipeline.lts_root, naming.archive_id(pid, 0)).read_bytes() == b"registered" * 100
        )
    assert "deleted 2 folder(s) older than 30 day(s), 80000 bytes" in real.stdout

    everything = prune_command(pipeline, "--older-than-days", "1")
    assert "deleted 2 folder(s) older than 1 day(s), 4000 bytes" in everything.stdout
    assert not any(folder.exists() for folder in folders.values())


def test_prune_command_refuses_a_missing_lts_clearly(pipeline):
    os.environ["LTS_STORAGE_ROOT"] = str(pipeline.lts_root / "not-mounted")
    try:
        result = prune_command(pipeline)
    finally:
        del os.environ["LTS_STORAGE_ROOT"]
    assert result.returncode == 2
    assert "not-mounted is not a folder" in result.stderr


def test_prune_never_deletes_the_only_copy_of_a_registered_datablock(pipeline):
    from archiver.flows.archive import archive_datasets_flow
    from archiver.flows.dataset_creation import create_test_dataset_flow

    pid = create_test_dataset_flow(num_files=2, file_size_mb=0.6)  # two datablocks (1 MB target)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    first, second = (
        lts_layout.datablock_path(pipeline.lts_root, d.archive_id) for d in pipeline.scicat.get_datablocks(pid)
    )
    bin_ = lts_layout.dataset_folder(pipeline.lts_root, pid) / "discarded"
    only_copy, stale_copy = (
        bin_ / (datetime.now(UTC) - timedelta(days=days)).strftime("%Y%m%dT%H%M%S.%fZ") for days in (90, 91)
    )
    only_copy.mkdir(parents=True)
    stale_copy.mkdir()
    first.rename(only_copy / first.name)  # registered, but moved aside: this is its only copy
    (stale_copy / second.name).write_bytes(second.read_bytes())  # a copy; the registered one is in datablocks/

    result = prune_command(pipeline)

    assert result.returncode == 0, result.stderr
    assert f"kept (only copy of registered datablock(s) {first.name}) {only_copy} " in result.stdout
    assert (only_copy / first.name).is_file() and second.is_file()
    assert not stale_copy.exists()
    assert "deleted 1 folder(s)" in result.stdout and "1 kept" in result.stdout


def test_prune_flow_uses_the_retention_setting_and_reports_a_table(pipeline):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    folders = lay_out(pipeline.lts_root)

    freed = prune_discarded_flow()

    assert freed == 80000
    assert {key: folder.exists() for key, folder in folders.items()} == {key: key[1] == 2 for key in folders}
    with get_client(sync_client=True) as client:
        [artifact] = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["prune-discarded"]))
        )
    assert "deleted 2, 80000 bytes freed" in artifact.description
    assert sorted(row["bytes"] for row in _rows(artifact.data)) == [40000, 40000]


def _rows(data):
    import json

    return json.loads(data) if isinstance(data, str) else data
