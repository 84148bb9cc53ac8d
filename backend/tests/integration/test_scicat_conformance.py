"""The archiver against a SciCat as strict as the real one: our real client and flows, the development
server refusing what SciCat refuses and replacing what SciCat replaces (docs/scicat.md).

Each protocol run is asserted call by call: method, path and the body fields that matter."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from archiver.clients.connections import connect
from archiver.config.runtime import load_run_configuration
from archiver.flows.archive import _clean_up_interrupted_archival, archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.scicat.models import NewDatablock
from tests import lts_layout
from tests.integration.test_flows import job_of, lifecycle_of
from tests.integration.test_flows import new_dataset as new_unmarked_dataset

pytestmark = pytest.mark.integration

DATABLOCK_FIELDS = {"archiveId", "size", "packedSize", "chkAlg", "version", "dataFileList"}
# Set by the ingestor (test-dataset flow) and never by the archiver: a replacing PATCH that does not send
# the complete lifecycle would reset it to SciCat's default (true).
MARKER = ("isOnCentralDisk", False)


def new_dataset(num_files: int, file_size_mb: float) -> str:
    """A test dataset whose lifecycle has MARKER, as an ingestor may have set it."""
    from archiver.config.runtime import load_run_configuration

    pid = new_unmarked_dataset(num_files, file_size_mb)
    with connect(load_run_configuration()) as connections:
        connections.scicat.update_lifecycle(pid, "mark", is_on_central_disk=MARKER[1])
    return pid


def protocol(pipeline, since: int, job_id: str, pids: list[str]) -> list[tuple]:
    """SciCat calls since `since` (logins left out) as (method, route, what the body says)."""
    names = {quote(pid, safe=""): "{pid}" if len(pids) == 1 else f"{{pid{i}}}" for i, pid in enumerate(pids)}
    names[job_id] = "{job}"
    seen = []
    for entry in pipeline.scicat_dev.requests():
        if entry["seq"] <= since or entry["path"].endswith("/auth/login"):
            continue
        route = "/".join(names.get(part, part) for part in entry["path"].split("?")[0].split("/")[3:])
        seen.append((entry["method"], route, _gist(entry.get("body"))))
    return seen


def _gist(body) -> object:
    if not isinstance(body, dict):
        return None
    if "datasetlifecycle" in body:
        lifecycle = body["datasetlifecycle"]
        status = ("archive", lifecycle.get("archiveStatusMessage"), "retrieve", lifecycle.get("retrieveStatusMessage"))
        return (*status, lifecycle.get("archivable"), lifecycle.get("retrievable"))
    if "archiveId" in body:
        return tuple(sorted(body))
    status = body.get("jobStatusMessage") or body.get("statusCode")
    return status if "jobResultObject" not in body else (status, "with result")


# Every job starts so: the status, the job's datasets, and per dataset what is on record.
OPENING = [
    ("POST", "jobs", None),
    ("PATCH", "jobs/{job}", "inProgress"),
    ("GET", "jobs/{job}", None),
    ("GET", "datasets/{pid}/datablocks", None),
    ("GET", "datasets/{pid}/origdatablocks", None),
]


def lifecycle_update(*gist) -> list[tuple]:
    """A lifecycle change: read the dataset, send the complete lifecycle back (SciCat replaces it)."""
    return [("GET", "datasets/{pid}", None), ("PATCH", "datasets/{pid}", gist)]


def job_end(status: str) -> tuple:
    return ("PATCH", "jobs/{job}", (status, "with result"))  # v3: the message goes into jobResultObject


def log_position(pipeline) -> int:
    return pipeline.scicat_dev.state()["nextSeq"] - 1


def archived(pipeline, pid: str) -> str:
    """A dataset archived by a job of its own; returns that job's id."""
    job_id = pipeline.new_job("archive", [pid])
    archive_datasets_flow(job_id=job_id)
    assert job_status(pipeline, job_id) == "finishedSuccessful"
    return job_id


def job_status(pipeline, job_id: str) -> str:
    """The job's status as the configured jobs API (v3 or v4) serves it."""
    version = pipeline.settings.scicat.job_status_schema
    return pipeline.job(job_id, version)["jobStatusMessage" if version == "v3" else "statusCode"]


def lts_files(pipeline, pid: str) -> dict[str, tuple[int, int]]:
    folder = lts_layout.dataset_folder(pipeline.lts_root, pid)
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


# --- call-by-call sequences ---


def test_archive_success_call_by_call(pipeline):
    pid = new_dataset(3, 0.4)
    since = log_position(pipeline)
    job_id = pipeline.new_job("archive", [pid])

    archive_datasets_flow(job_id=job_id)  # the flow reads the datasets from the job

    log = protocol(pipeline, since, job_id, [pid])
    blocks = [c for c in log if c[:2] == ("POST", "datasets/{pid}/datablocks")]
    assert len(blocks) >= 2
    assert log == [
        *OPENING,
        *lifecycle_update("archive", "started", "retrieve", "", False, False),
        *[("POST", "datasets/{pid}/datablocks", tuple(sorted(DATABLOCK_FIELDS)))] * len(blocks),
        *lifecycle_update("archive", "datasetOnArchiveDisk", "retrieve", "", False, True),
        job_end("finishedSuccessful"),  # v3: the message goes there
    ]
    dataset = pipeline.scicat_dev.state()["datasets"][pid]
    assert dataset["datasetlifecycle"][MARKER[0]] == MARKER[1]  # complete lifecycle sent, nothing reset
    assert pipeline.landing_keys(pid) == []


def test_archive_user_error_call_by_call(pipeline):
    pid = new_dataset(2, 0.2)
    [victim, *_] = pipeline.landing_keys(pid)
    pipeline.s3.delete_object(Bucket=pipeline.settings.s3.landingzone_bucket, Key=victim)
    since = log_position(pipeline)
    job_id = pipeline.new_job("archive", [pid])

    assert archive_datasets_flow(job_id=job_id, return_state=True).is_failed()

    assert protocol(pipeline, since, job_id, [pid]) == [
        *OPENING,
        *lifecycle_update("archive", "started", "retrieve", "", False, False),
        *lifecycle_update("archive", "missingFilesError", "retrieve", "", True, False),
        job_end("finishedWithDatasetErrors"),
    ]
    lifecycle = lifecycle_of(pipeline, pid)
    assert victim.rsplit("/", 1)[-1] in str(lifecycle["archiveReturnMessage"])
    assert lifecycle[MARKER[0]] == MARKER[1]
    assert len(pipeline.landing_keys(pid)) == 1  # left as it was


def test_archive_system_error_call_by_call(pipeline):
    pid = new_dataset(2, 0.2)
    pipeline.set_vars("lts", LTS_FREE_SPACE_PERCENTAGE=99.99, LTS_FREE_SPACE_TIMEOUT_S=1)  # never enough room
    since = log_position(pipeline)
    job_id = pipeline.new_job("archive", [pid])

    assert archive_datasets_flow(job_id=job_id, return_state=True).is_failed()

    assert protocol(pipeline, since, job_id, [pid]) == [
        *OPENING,
        *lifecycle_update("archive", "started", "retrieve", "", False, False),
        *lifecycle_update("archive", "scheduleArchiveJobFailed", "retrieve", "", True, False),
        job_end("finishedUnsuccessful"),
    ]
    assert "LtsWaitTimeout" in str(lifecycle_of(pipeline, pid)["archiveReturnMessage"])
    assert len(pipeline.landing_keys(pid)) == 2


def test_retrieve_success_call_by_call(pipeline):
    pid = new_dataset(3, 0.4)
    archived(pipeline, pid)
    since = log_position(pipeline)
    job_id = pipeline.new_job("retrieve", [pid])

    retrieve_datasets_flow(job_id=job_id)

    archived_flags = (False, True)
    assert protocol(pipeline, since, job_id, [pid]) == [
        *OPENING,
        *lifecycle_update("archive", "datasetOnArchiveDisk", "retrieve", "started", *archived_flags),
        *lifecycle_update("archive", "datasetOnArchiveDisk", "retrieve", "datasetRetrieved", *archived_flags),
        job_end("finishedSuccessful"),
    ]
    lifecycle = lifecycle_of(pipeline, pid)
    assert lifecycle["retrieveIntegrityCheck"] is True and lifecycle[MARKER[0]] == MARKER[1]


def test_retrieve_failure_call_by_call(pipeline):
    pid = new_dataset(2, 0.2)
    archived(pipeline, pid)
    [first, *_] = pipeline.scicat.get_datablocks(pid)
    with open(lts_layout.datablock_path(pipeline.lts_root, first.archive_id), "r+b") as f:
        f.seek(512 + 10)
        f.write(b"\0corrupt\0")
    since = log_position(pipeline)
    job_id = pipeline.new_job("retrieve", [pid])

    assert retrieve_datasets_flow(job_id=job_id, return_state=True).is_failed()

    assert protocol(pipeline, since, job_id, [pid]) == [
        *OPENING,
        *lifecycle_update("archive", "datasetOnArchiveDisk", "retrieve", "started", False, True),
        *lifecycle_update("archive", "datasetOnArchiveDisk", "retrieve", "datasetRetrievalFailed", False, True),
        job_end("finishedUnsuccessful"),
    ]
    assert pipeline.retrieval_keys(pid) == []


# --- the bugs of issue 11, one test each ---


@pytest.mark.parametrize("jobs", ["v3", "v4"])
def test_bug1_datablocks_are_registered_without_refused_fields(pipeline, jobs):
    pipeline.set_vars("scicat", SCICAT_JOBS_API_PREFIX=f"/api/{jobs}/", SCICAT_JOB_STATUS_SCHEMA=jobs)
    pid = new_dataset(3, 0.4)
    job_id = archived(pipeline, pid)

    posted = [e for e in pipeline.scicat_dev.requests() if e["method"] == "POST" and e["path"].endswith("/datablocks")]
    assert posted and all(e["status"] == 201 and set(e["body"]) == DATABLOCK_FIELDS for e in posted)
    registered = pipeline.scicat.get_datablocks(pid)
    assert sorted(f.path for d in registered for f in d.data_file_list) == sorted(
        f.path for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list
    )
    assert job_status(pipeline, job_id) == "finishedSuccessful"


def test_bug2_datasets_come_from_a_v3_jobs_top_level_list(pipeline):
    pids = [new_dataset(1, 0.1), new_dataset(1, 0.1)]
    job_id = pipeline.new_job("archive", pids)
    assert [d["pid"] for d in pipeline.job(job_id, "v3")["datasetList"]] == pids  # how /api/v3 answers

    archive_datasets_flow(job_id=job_id)

    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedSuccessful"
    for pid in pids:
        assert lifecycle_of(pipeline, pid)["archiveStatusMessage"] == "datasetOnArchiveDisk"


def test_bug2_a_job_without_datasets_fails_saying_so(pipeline):
    job_id = pipeline.new_job("archive", [])

    assert archive_datasets_flow(job_id=job_id, return_state=True).is_failed()

    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedUnsuccessful"
    assert "names no datasets" in job["jobResultObject"]["message"]


def test_bug3_retrieval_keeps_the_archived_state(pipeline):
    pid = new_dataset(2, 0.2)
    archived(pipeline, pid)

    retrieve_datasets_flow(job_id=pipeline.new_job("retrieve", [pid]))

    lifecycle = lifecycle_of(pipeline, pid)
    assert (lifecycle["archiveStatusMessage"], lifecycle["archivable"], lifecycle["retrievable"]) == (
        "datasetOnArchiveDisk",
        False,
        True,
    )
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrieved" and lifecycle[MARKER[0]] == MARKER[1]


def test_bug4_rearchive_after_lifecycle_reset_touches_nothing(pipeline):
    pid = new_dataset(3, 0.4)
    archived(pipeline, pid)
    before_lts = lts_files(pipeline, pid)
    before_scicat = sorted((d.id, d.archive_id) for d in pipeline.scicat.get_datablocks(pid))
    # What a replacing PATCH without the archive fields did: the dataset looks archivable again.
    pipeline.scicat.update_lifecycle(
        pid, "reset", archive_status_message="datasetCreated", archivable=True, retrievable=False
    )
    job_id = pipeline.new_job("archive", [pid])

    archive_datasets_flow(job_id=job_id)

    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedSuccessful"
    assert "already archived" in job["jobResultObject"]["message"]
    assert lts_files(pipeline, pid) == before_lts  # same files, same mtimes, nothing discarded
    assert sorted((d.id, d.archive_id) for d in pipeline.scicat.get_datablocks(pid)) == before_scicat
    lifecycle = lifecycle_of(pipeline, pid)
    assert (lifecycle["archiveStatusMessage"], lifecycle["archivable"], lifecycle["retrievable"]) == (
        "datasetOnArchiveDisk",
        False,
        True,
    )


def test_bug4_interrupted_run_cleanup_leaves_an_archived_dataset_alone(pipeline):
    pid = new_dataset(2, 0.2)
    archived(pipeline, pid)
    before_lts = lts_files(pipeline, pid)
    before_scicat = sorted(d.id for d in pipeline.scicat.get_datablocks(pid))
    pipeline.scicat.update_lifecycle(
        pid, "reset", archive_status_message="started", archivable=False, retrievable=False
    )

    config = load_run_configuration()
    with connect(config) as connections:
        _clean_up_interrupted_archival(
            pid, config, connections, RuntimeError("archival run crashed"), logging.getLogger("test")
        )

    assert lts_files(pipeline, pid) == before_lts
    assert sorted(d.id for d in pipeline.scicat.get_datablocks(pid)) == before_scicat
    assert lifecycle_of(pipeline, pid)["archiveStatusMessage"] == "datasetOnArchiveDisk"


def test_bug5_retrieving_a_never_archived_dataset_leaves_it_unretrievable(pipeline):
    pid = new_dataset(1, 0.1)
    job_id = pipeline.new_job("retrieve", [pid])

    assert retrieve_datasets_flow(job_id=job_id, return_state=True).is_failed()

    assert job_of(pipeline, job_id)["jobStatusMessage"] == "finishedWithDatasetErrors"
    lifecycle = lifecycle_of(pipeline, pid)
    assert (lifecycle["archivable"], lifecycle["retrievable"]) == (True, False)
    assert lifecycle["archiveStatusMessage"] == "datasetCreated"
    assert lifecycle["retrieveStatusMessage"] == "datasetRetrievalFailed"
    assert "not archived" in str(lifecycle["retrieveReturnMessage"])


@pytest.mark.parametrize("bad_pid", [".", ".."])
def test_bug5_dot_pids_never_reach_a_scicat_url(pipeline, bad_pid):
    good = new_dataset(1, 0.1)
    since = log_position(pipeline)
    job_id = pipeline.new_job("archive", [good])

    # As the archiver API passes a job's dataset list on (SciCat itself may refuse such a job).
    assert archive_datasets_flow(job_id=job_id, dataset_ids=[bad_pid, good], return_state=True).is_failed()

    paths = [e["path"] for e in pipeline.scicat_dev.requests() if e["seq"] > since]
    dataset_paths = {p.split("/datasets/")[1].split("/")[0] for p in paths if "/datasets/" in p}
    assert dataset_paths == {quote(good, safe="")}
    assert not any(p.rstrip("/").endswith(("/api/v3", "/api", "/datasets")) for p in paths)
    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"
    assert repr(bad_pid) in job["jobResultObject"]["message"]
    assert lifecycle_of(pipeline, good)["archiveStatusMessage"] == "datasetOnArchiveDisk"


def test_bug5_a_datablock_of_another_dataset_is_not_served(pipeline):
    victim, requester = new_dataset(1, 0.1), new_dataset(1, 0.1)
    archived(pipeline, victim)
    archived(pipeline, requester)
    [foreign] = pipeline.scicat.get_datablocks(victim)
    # A record of the requester's dataset naming the victim's tar (a mistake or a forged record).
    pipeline.scicat.create_datablock(
        requester, NewDatablock.model_validate(foreign.model_dump(include=set(NewDatablock.model_fields)))
    )
    job_id = pipeline.new_job("retrieve", [requester])

    assert retrieve_datasets_flow(job_id=job_id, return_state=True).is_failed()

    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedUnsuccessful"
    assert "result" not in job["jobResultObject"]
    assert "is not a datablock of dataset" in job["jobResultObject"]["message"]
    assert pipeline.retrieval_keys(victim) == [] and pipeline.retrieval_keys(requester) == []


def test_bug5_a_pid_nesting_in_another_landing_prefix_is_refused(pipeline):
    outer = new_dataset(2, 0.1)
    nested = f"{outer}/raw_files/nested"
    job_id = pipeline.new_job("archive", [outer])
    since = log_position(pipeline)

    assert archive_datasets_flow(job_id=job_id, dataset_ids=[nested], return_state=True).is_failed()

    job = job_of(pipeline, job_id)
    assert job["jobStatusMessage"] == "finishedWithDatasetErrors"
    assert "raw_files" in job["jobResultObject"]["message"]
    assert not any("/datasets/" in e["path"] for e in pipeline.scicat_dev.requests() if e["seq"] > since)
    assert len(pipeline.landing_keys(outer)) == 2  # the outer dataset's files are untouched
