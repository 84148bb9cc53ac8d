import pytest

from archiver.scicat.client import ScicatCredentials, encode_id, job_status_body
from archiver.scicat.models import (
    Datablock,
    DataFile,
    DatasetLifecycle,
    Job,
    JobResultEntry,
    JobResultObject,
    JobStatus,
)


def test_wire_form_uses_scicat_names_and_omits_unset_fields():
    lifecycle = DatasetLifecycle(archive_status_message="started", archivable=False)
    assert lifecycle.to_wire() == {"archiveStatusMessage": "started", "archivable": False}

    block = Datablock(
        archive_id="ds/1.tar", size=10, packed_size=20480, chk_alg="sha256", version="1",
        data_file_list=[DataFile(path="a/b.raw", size=10, time="2024-05-01T12:00:00Z", chk="ab")],
    )
    assert block.to_wire() == {
        "archiveId": "ds/1.tar", "size": 10, "packedSize": 20480, "chkAlg": "sha256", "version": "1",
        "dataFileList": [{"path": "a/b.raw", "size": 10, "time": "2024-05-01T12:00:00Z", "chk": "ab"}],
    }


def test_fields_scicat_sends_but_we_do_not_model_are_kept():
    job = Job.model_validate({"id": "j1", "type": "archive", "ownerGroup": "g", "jobParams": {
        "datasetList": [{"pid": "20.500/x", "files": []}], "option": 1}})
    assert job.dataset_pids == ["20.500/x"]
    assert job.to_wire()["ownerGroup"] == "g"
    assert job.to_wire()["jobParams"]["option"] == 1


def test_job_status_body_v3_and_v4():
    result = JobResultObject(result=[JobResultEntry(dataset_id="p", name="b.tar", size=3, archive_id="a", url="http://u")])
    assert job_status_body("v3", JobStatus.IN_PROGRESS) == {"jobStatusMessage": "inProgress"}
    assert job_status_body("v4", JobStatus.FINISHED_SUCCESSFUL, "all done", result) == {
        "statusCode": "finishedSuccessful", "statusMessage": "all done",
        "jobResultObject": {"result": [{"datasetId": "p", "name": "b.tar", "size": 3, "archiveId": "a", "url": "http://u"}]},
    }
    with pytest.raises(ValueError, match="'v5'.*SCICAT_JOB_STATUS_SCHEMA"):
        job_status_body("v5", JobStatus.IN_PROGRESS)


def test_pids_are_encoded_completely():
    assert encode_id("20.500.11935/0a1b c?#%") == "20.500.11935%2F0a1b%20c%3F%23%25"


def test_credentials_repr_hides_password():
    assert "s3cret" not in repr(ScicatCredentials("archiver", "s3cret"))
