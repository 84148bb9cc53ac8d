"""The cold S3 LTS in the compose stack: an archive and a retrieve job run in flow-run containers with the LTS a
bucket of the stack's S3 behind the cold tier stand-in (DEEP_ARCHIVE, restores taking seconds), switched on as an
operator does it (docs/lts-backends.md, "Deploying the cold store"): the LTS account's secret files and the
`LTS_*` settings, seeded by the `prefect-config` one-shot; switched back to the POSIX volume afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from archiver.config.secrets import LTS_S3
from archiver.config.settings import load_vars_file
from archiver.devtools.cold_s3 import ColdTier, cold_s3_proxy
from archiver.packing.naming import safe_name
from archiver.storage.s3 import S3Credentials

pytestmark = pytest.mark.stack
VARS = load_vars_file(Path(__file__).resolve().parents[3] / "prefect-vars.toml")

LTS_BUCKET = "archiver-lts-cold"


def network_gateway(network: str) -> str:
    """The host's address on the stack's network: where the flow-run containers reach a server of this process."""
    return subprocess.run(
        ["docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def seed(stack, **settings: str):
    """`prefect-config` run again, with `settings` (keys of prefect-vars.toml) in its environment."""
    overrides = [arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")]
    result = stack.compose("run", "--rm", *overrides, "prefect-config", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def cold_lts(stack, stack_s3, operator):
    region = VARS.s3.region
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    stack_s3.create_bucket(Bucket=LTS_BUCKET, **location)
    # The stack's S3 root account as the LTS account: the offline S3 stand-in has no account of its own for it.
    root = S3Credentials(stack.secret("miniouser.txt"), stack.secret("miniopass.txt"))
    gateway = network_gateway(stack.env["STACK_NETWORK"])
    files = [stack.secrets_dir / spec.filename for spec in (LTS_S3.user, LTS_S3.password)]
    saved = [path.read_text() for path in files]
    with cold_s3_proxy(stack.s3_url, region, root, ColdTier(restore_delay_s=3.0), host=gateway) as proxy:
        try:
            for path, value in zip(files, (root.access_key, root.secret_key), strict=True):
                path.write_text(value + "\n")
            seed(stack, LTS_BACKEND="s3", LTS_S3_ENDPOINT=proxy.url, LTS_S3_REGION=region, LTS_S3_BUCKET=LTS_BUCKET)
            stack.set_variable("archiver_target_size_mb", 1)  # the `operator` fixture's, which seeding reset
            yield proxy
        finally:
            for path, text in zip(files, saved, strict=True):  # the root account stays out of Prefect's blocks
                path.write_text(text)
            back = seed(stack)  # the file's settings: the LTS_S3_* variables are deleted, the volume is the LTS
            assert "variable lts_backend" in back.stdout, back.stdout


def test_archive_and_retrieve_jobs_run_on_the_cold_store_restoring_each_datablock_once(stack, operator, cold_lts):
    pid = operator.ingest_dataset(3, 700 * 1024)  # one datablock per file (the `operator` fixture: 1 MB)
    job, started = operator.create_job("archive", [pid])
    run = operator.wait(started)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    assert len(operator.assert_archived_whatever_the_store(pid, job["id"])) == 3
    assert operator.dataset(pid)["datasetlifecycle"]["storageLocation"] == f"s3://{LTS_BUCKET}"
    tars = sorted(
        o["Key"]
        for o in operator.s3.list_objects_v2(Bucket=LTS_BUCKET, Prefix="").get("Contents", [])
        if o["Key"].endswith(".tar") and safe_name(pid) in o["Key"]
    )
    assert len(tars) == 3
    assert {operator.s3.head_object(Bucket=LTS_BUCKET, Key=key)["StorageClass"] for key in tars} == {"DEEP_ARCHIVE"}
    assert operator.lts_files(pid) == []  # nothing on the POSIX volume
    assert cold_lts.tier.restore_requests == []  # verified by S3's stored checksums, no restore

    job, started = operator.create_job("retrieve", [pid])
    run = operator.wait(started)
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    operator.assert_retrieved(pid, job["id"])
    assert sorted(key for _, key, _ in cold_lts.tier.restore_requests) == tars  # one restore per datablock
