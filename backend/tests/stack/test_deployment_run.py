"""A deployment run goes the way production runs go: the worker starts a container of the runtime image."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.config.settings import load_vars_file

REPO = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]


def test_a_dataset_creation_run_executes_in_a_container_the_archival_worker_starts(stack, stack_s3):
    before = set(stack.scicat_state()["datasets"])
    run = stack.start_deployment_run("create_test_dataset/dataset_creation", {"num_files": 2, "file_size_mb": 0.1})
    run = stack.wait_for_flow_run(run["id"], timeout_s=300)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)

    container = stack.flow_run_container(run)
    assert container["Config"]["Image"] == stack.env["ARCHIVER_IMAGE"]
    assert container["Config"]["Labels"]["io.prefect.flow-run-id"] == run["id"]
    services = {entry["ID"] for entry in stack.services().values()}
    assert not any(container["Id"].startswith(service) for service in services), "ran in a compose service container"
    assert container["State"]["ExitCode"] == 0
    assert list(container["NetworkSettings"]["Networks"]) == [stack.env["STACK_NETWORK"]]
    lts_root = str(load_vars_file(REPO / "prefect-vars.toml").lts.storage_root)
    mounts = {m["Destination"]: m for m in container["Mounts"]}
    assert mounts[lts_root]["Type"] == "volume" and mounts[lts_root]["Name"] == stack.env["LTS_VOLUME_NAME"]
    assert run["work_pool_name"] == "archival-docker-pool"

    # What it did: a dataset in SciCat with an origdatablock of 2 files, the files in the landing zone.
    created = set(stack.scicat_state()["datasets"]) - before
    assert len(created) == 1, created
    pid = created.pop()
    files = [
        f
        for block in stack.scicat_state()["origdatablocks"].values()
        if block["datasetId"] == pid
        for f in block["dataFileList"]
    ]
    assert sorted(f["path"] for f in files) == ["file_0000.bin", "file_0001.bin"]
    keys = [
        o["Key"]
        for o in stack_s3.list_objects_v2(Bucket="landingzone", Prefix=f"openem-network/datasets/{pid}/").get(
            "Contents", []
        )
    ]
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == ["file_0000.bin", "file_0001.bin"]
