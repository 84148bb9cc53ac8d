import pytest
from pydantic import ValidationError

from archiver.scicat.client import InvalidIdError, ScicatCredentials, encode_id, job_status_body
from archiver.scicat.models import (
    DataFile,
    DatasetLifecycle,
    Job,
    JobResultEntry,
    JobResultObject,
    JobStatus,
    NewDatablock,
    NewOrigDatablock,
)


def test_wire_form_uses_scicat_names_and_omits_unset_fields():
    lifecycle = DatasetLifecycle(archive_status_message="started", archivable=False)
    assert lifecycle.to_wire() == {"archiveStatusMessage": "started", "archivable": False}

    block = NewDatablock(
        archive_id="ds/1.tar",
        size=10,
        packed_size=20480,
        chk_alg="sha256",
        version="1",
        data_file_list=[DataFile(path="a/b.raw", size=10, time="2024-05-01T12:00:00Z", chk="ab")],
    )
    assert block.to_wire() == {
        "archiveId": "ds/1.tar",
        "size": 10,
        "packedSize": 20480,
        "chkAlg": "sha256",
        "version": "1",
        "dataFileList": [{"path": "a/b.raw", "size": 10, "time": "2024-05-01T12:00:00Z", "chk": "ab"}],
    }


def test_fields_scicat_sends_but_we_do_not_model_are_never_sent_back():
    job = Job.model_validate(
        {
            "id": "j1",
            "type": "archive",
            "ownerGroup": "g",
            "jobParams": {"datasetList": [{"pid": "20.500/x", "files": []}], "option": 1},
        }
    )
    assert job.dataset_pids == ["20.500/x"]
    assert "ownerGroup" not in job.to_wire() and "option" not in job.to_wire()["jobParams"]


def test_job_datasets_are_read_from_either_shape():
    v3 = Job.model_validate(
        {"id": "j", "type": "archive", "datasetList": [{"pid": "a"}, {"pid": "b"}], "jobParams": {}}
    )
    v4 = Job.model_validate({"id": "j", "type": "archive", "jobParams": {"datasetList": [{"pid": "a"}]}})
    assert (v3.dataset_pids, v4.dataset_pids) == (["a", "b"], ["a"])
    assert Job.model_validate({"id": "j", "type": "archive"}).dataset_pids == []


@pytest.mark.parametrize("body", [NewDatablock, NewOrigDatablock])
def test_bodies_sent_to_scicat_refuse_fields_it_refuses(body):
    files = [DataFile(path="a", size=1, time="2024-05-01T12:00:00Z")]
    fields = {
        "archive_id": "x.tar",
        "size": 1,
        "packed_size": 2048,
        "chk_alg": "sha256",
        "version": "1",
        "data_file_list": files,
    }
    fields = {k: v for k, v in fields.items() if k in body.model_fields}
    body(**fields)
    for refused in ("datasetId", "ownerGroup", "accessGroups"):
        with pytest.raises(ValidationError, match=refused):
            body(**fields, **{refused: "x"})


def test_lifecycle_changes_keep_every_other_field():
    current = DatasetLifecycle.model_validate({"archivable": False, "isOnCentralDisk": False, "unknownToUs": 1})
    changed = current.with_changes(retrieve_status_message="started")
    assert changed.to_wire() == {"archivable": False, "isOnCentralDisk": False, "retrieveStatusMessage": "started"}


def test_job_status_body_v3_and_v4():
    result = JobResultObject(
        result=[JobResultEntry(dataset_id="p", name="b.tar", size=3, archive_id="a", url="http://u")]
    )
    assert job_status_body("v3", JobStatus.IN_PROGRESS, "started") == {"jobStatusMessage": "inProgress"}
    assert job_status_body("v3", JobStatus.FINISHED_UNSUCCESSFUL, "why") == {
        "jobStatusMessage": "finishedUnsuccessful",
        "jobResultObject": {"message": "why"},
    }
    assert job_status_body("v4", JobStatus.FINISHED_SUCCESSFUL, "all done", result) == {
        "statusCode": "finishedSuccessful",
        "statusMessage": "all done",
        "jobResultObject": {
            "result": [{"datasetId": "p", "name": "b.tar", "size": 3, "archiveId": "a", "url": "http://u"}]
        },
    }
    with pytest.raises(ValueError, match="'v5'.*SCICAT_JOB_STATUS_SCHEMA"):
        job_status_body("v5", JobStatus.IN_PROGRESS)


def test_pids_are_encoded_completely():
    assert encode_id("20.500.11935/0a1b c?#%") == "20.500.11935%2F0a1b%20c%3F%23%25"


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_ids_that_are_path_navigation_are_refused(value):
    with pytest.raises(InvalidIdError, match="path segment"):
        encode_id(value)


def test_credentials_repr_hides_password():
    assert "s3cret" not in repr(ScicatCredentials("archiver", "s3cret"))
