"""The download script in a retrieval job's result, run for real with sh and curl against the S3 server:
it resumes an interrupted transfer, catches a corrupted one by its checksum, and unpacks datablocks."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing import naming
from tests.integration.test_flows import _artifacts_of, job_of, new_dataset

pytestmark = pytest.mark.integration


def run_script(script: str, folder: Path) -> subprocess.CompletedProcess:
    (folder / "download.sh").write_text(script)
    return subprocess.run(["sh", "download.sh"], cwd=folder, capture_output=True, text=True, timeout=120)


def test_whole_dataset_script_resumes_an_interrupted_datablock_and_unpacks_it(pipeline, tmp_path):
    pid = new_dataset(3, 0.3)
    originals = {
        key.rsplit("/", 1)[-1]: pipeline.s3.get_object(Bucket=pipeline.settings.s3.landingzone_bucket, Key=key)[
            "Body"
        ].read()
        for key in pipeline.landing_keys(pid)
    }
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    job_id = pipeline.new_job("retrieve", [pid])
    state = retrieve_datasets_flow(job_id=job_id, return_state=True)
    result = job_of(pipeline, job_id)["jobResultObject"]
    script = result["downloadScript"]
    [markdown] = [a for a in _artifacts_of(state) if a.type == "markdown"]
    assert script not in markdown.data  # it holds the links: never in the Prefect UI

    [entry] = result["result"]
    assert entry["type"] == "datablock"
    tar = pipeline.s3.get_object(
        Bucket=pipeline.settings.s3.retrieval_bucket, Key=naming.retrieval_key(entry["archiveId"])
    )["Body"].read()
    folder = tmp_path / "download"
    target = folder / naming.safe_name(pid) / "datablocks" / entry["name"]
    target.parent.mkdir(parents=True)
    target.write_bytes(tar[: len(tar) // 3])  # as an interrupted transfer left it

    done = run_script(script, folder)

    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == tar
    unpacked = {p.name: p.read_bytes() for p in (folder / naming.safe_name(pid)).glob("file_*")}
    assert unpacked == originals
    assert "all downloads complete and checked" in done.stdout

    again = run_script(script, folder)  # a second run keeps what is complete and checked
    assert again.returncode == 0 and "unpacked" not in again.stdout


def test_partial_retrieval_script_catches_a_corrupted_partial_and_recovers_on_rerun(pipeline, tmp_path):
    pipeline.set_vars("archiver", ARCHIVER_CHECKSUM_ALGORITHM="md5")  # md5sum, as configured
    pid = new_dataset(2, 0.3)
    bucket = pipeline.settings.s3.landingzone_bucket
    [key, _] = pipeline.landing_keys(pid)
    name, original = key.rsplit("/", 1)[-1], pipeline.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    job_id = pipeline.new_job("retrieve", [pid], files={pid: [name]})
    retrieve_datasets_flow(job_id=job_id)
    result = job_of(pipeline, job_id)["jobResultObject"]
    [entry] = result["result"]
    assert (entry["type"], entry["chkAlg"], entry["chk"]) == ("file", "md5", hashlib.md5(original).hexdigest())
    folder = tmp_path / "download"
    target = folder / naming.safe_name(pid) / name
    target.parent.mkdir(parents=True)
    corrupted = bytearray(original[:1000])
    corrupted[10] ^= 0xFF
    target.write_bytes(bytes(corrupted))  # a partial download damaged on the way

    first = run_script(result["downloadScript"], folder)

    # the transfer resumed after the damaged bytes (they were kept), and the checksum caught them
    assert first.returncode == 1
    assert f"FAILED checksum: {naming.safe_name(pid)}/{name} is md5" in first.stderr
    assert not target.exists()
    second = run_script(result["downloadScript"], folder)
    assert second.returncode == 0, second.stderr
    assert target.read_bytes() == original


def test_file_names_are_quoted_in_the_script(tmp_path):
    from archiver.packing.download_script import Download, download_script

    evil = "x'; touch pwned; echo '.bin"
    script = download_script(
        "job-1", [Download("20.500/a", evil, "http://127.0.0.1:9/none", 1, "sha256", "0" * 64, is_datablock=False)]
    )
    run_script(script, tmp_path)
    assert not (tmp_path / "pwned").exists()
