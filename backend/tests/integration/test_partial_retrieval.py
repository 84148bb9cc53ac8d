"""Partial retrieval: a job naming single files of a dataset gets exactly those files, read from only the
datablocks holding them. Real Prefect server, S3 server, SciCat development server, on both LTS stores: an LTS
folder, where the bytes read are counted by the kernel (/proc/self/io) and the files opened by Python's audit
hook, and the cold S3 store, where only the datablocks holding the files are restored (counted at the cold tier
stand-in)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import httpx
import pytest

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing import naming
from tests import lts_layout
from tests.integration.test_flows import calls, job_of, lifecycle_of, new_dataset

pytestmark = pytest.mark.integration

_opened: list[str] | None = None  # paths opened while a recording is on


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, Path)):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one records only inside `reading()`


def read_chars() -> int:
    """Bytes this process got from read()-like system calls so far, all threads (the kernel's `rchar`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def retrieval_calls(pipeline, since_seq: int) -> list[tuple]:
    """SciCat calls as (method, what, status): a dataset PATCH shows its retrieveStatusMessage."""
    seen = []
    for (method, what, _, status), entry in zip(
        calls(pipeline, since_seq), _without_logins(pipeline, since_seq), strict=False
    ):
        if (method, what) == ("PATCH", "dataset"):
            status = entry["body"]["datasetlifecycle"]["retrieveStatusMessage"]
        seen.append((method, what, status))
    return seen


def _without_logins(pipeline, since_seq: int) -> list[dict]:
    return [e for e in pipeline.scicat_dev.requests() if e["seq"] > since_seq and not e["path"].endswith("auth/login")]


def retrieve_recording_reads(pipeline, job_id: str, **options):
    """Run the retrieval; returns (its final state, bytes read meanwhile, tar files opened on the LTS)."""
    global _opened
    _opened, before = [], read_chars()
    try:
        state = retrieve_datasets_flow(job_id=job_id, return_state=True, **options)
        read = read_chars() - before
        tars = {p for p in _opened if p.startswith(str(pipeline.lts_root)) and p.endswith(naming.TAR_SUFFIX)}
    finally:
        _opened = None
    return state, read, tars


@pytest.fixture
def archived_50(pipeline, lts_backend):
    """A dataset of 50 files of 0.5 MiB archived in datablocks of about 5 MiB (on the cold store: no restored
    copy of any left); the bytes of each file."""
    pipeline.set_vars("archiver", ARCHIVER_TARGET_SIZE_MB=5)
    pid = new_dataset(50, 0.5)
    bucket = pipeline.settings.s3.landingzone_bucket
    originals = {
        key.rsplit("/", 1)[-1]: pipeline.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in pipeline.landing_keys(pid)
    }
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    if lts_backend is not None:
        lts_backend[0].tier.expire_restores()
    return pid, originals


def restored(lts_backend, since: int) -> set[str]:
    """The datablocks whose restore was asked for at the cold tier stand-in since its `since`th request."""
    proxy, bucket = lts_backend
    return {key for b, key, _ in proxy.tier.restore_requests[since:] if b == bucket}


def test_two_of_fifty_files_read_only_their_members_and_arrive_byte_identical(pipeline, lts_backend, archived_50):
    pid, originals = archived_50
    datablocks = pipeline.scicat.get_datablocks(pid)
    assert len(datablocks) >= 5
    wanted = ["file_0003.bin", "file_0042.bin"]
    holding = [d for d in datablocks if any(f.path in wanted for f in d.data_file_list)]
    assert len(holding) == 2  # the two files lie in different datablocks
    start = pipeline.scicat_dev.state()["nextSeq"] - 1
    job_id = pipeline.new_job("retrieve", [pid], files={pid: wanted})
    restores_before = len(lts_backend[0].tier.restore_requests) if lts_backend else 0

    state, bytes_read, tars = retrieve_recording_reads(pipeline, job_id)
    scicat_calls = retrieval_calls(pipeline, start)

    assert state.is_completed()
    wanted_bytes = sum(len(originals[name]) for name in wanted)
    whole_blocks = sum(d.packed_size for d in holding)
    print(
        f"partial retrieval of 2 of 50 files: {bytes_read} bytes read by the process, files {wanted_bytes}, "
        f"their datablocks {whole_blocks}, dataset {sum(d.packed_size for d in datablocks)}"
    )
    if lts_backend is None:
        assert tars == {str(lts_layout.datablock_path(pipeline.lts_root, d.archive_id)) for d in holding}
        # Everything the process read (the LTS, and the HTTP answers of Prefect, SciCat and S3: about 1.5 MiB
        # measured) stays below the two files plus 3 MiB, less than half of their two datablocks.
        assert bytes_read < wanted_bytes + 3 * 1024 * 1024 < whole_blocks / 2
    else:
        assert restored(lts_backend, restores_before) == {d.archive_id for d in holding}  # only those two

    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedSuccessful"
    entries = job["jobResultObject"]["result"]
    assert sorted(e["name"] for e in entries) == wanted
    for entry in entries:
        assert entry["type"] == "file" and entry["datasetId"] == pid
        assert entry["archiveId"] in {d.archive_id for d in holding}
        content = httpx.get(entry["url"], timeout=60).raise_for_status().content
        assert content == originals[entry["name"]]
        assert (entry["chkAlg"], entry["chk"]) == ("sha256", hashlib.sha256(content).hexdigest())
    assert pipeline.retrieval_keys(pid) == sorted(naming.retrieved_file_key(pid, name) for name in wanted)

    assert scicat_calls == [
        ("POST", "job", None),
        ("PATCH", "job", "inProgress"),
        ("GET", "job", None),  # the files come from the job's datasetList
        ("GET", "datablocks", None),  # which datablocks hold them
        ("GET", "origdatablocks", None),
        ("GET", "dataset", None),
        ("PATCH", "dataset", "started"),
        ("GET", "dataset", None),
        ("PATCH", "dataset", "datasetRetrieved"),
        ("PATCH", "job", "finishedSuccessful"),
    ]
    assert lifecycle_of(pipeline, pid)["retrieveStatusMessage"] == "datasetRetrieved"


def test_a_file_not_in_the_dataset_is_a_user_error_naming_it(pipeline, lts_backend):
    pid = new_dataset(3, 0.2)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    if lts_backend is not None:
        lts_backend[0].tier.expire_restores()
    restores_after_archival = list(lts_backend[0].tier.restore_requests) if lts_backend else []
    start = pipeline.scicat_dev.state()["nextSeq"] - 1
    job_id = pipeline.new_job("retrieve", [pid], files={pid: ["file_0001.bin", "no/such.bin"]})

    state = retrieve_datasets_flow(job_id=job_id, return_state=True)
    scicat_calls = retrieval_calls(pipeline, start)

    assert state.is_failed()
    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"  # a user's mistake, not a system error
    assert "'no/such.bin'" in job["jobResultObject"]["message"]
    assert "file_0001.bin" not in job["jobResultObject"]["message"]
    lifecycle = lifecycle_of(pipeline, pid)
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
    assert "no/such.bin" in str(lifecycle["retrieveReturnMessage"])
    assert pipeline.retrieval_keys(pid) == []
    if lts_backend is not None:
        proxy, _ = lts_backend
        assert proxy.tier.restore_requests == restores_after_archival  # nothing restored for a refused job
    assert scicat_calls == [
        ("POST", "job", None),
        ("PATCH", "job", "inProgress"),
        ("GET", "job", None),
        ("GET", "datablocks", None),
        ("GET", "origdatablocks", None),
        ("GET", "dataset", None),
        ("PATCH", "dataset", "datasetRetrievalFailed"),  # never "started"
        ("PATCH", "job", "finishedWithDatasetErrors"),
    ]
