"""The SciCat client against the SciCat development server, over HTTP."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from archiver import local_services
from archiver.config.settings import ScicatSection
from archiver.scicat.client import ScicatClient, ScicatCredentials, ScicatError
from archiver.scicat.models import (
    ArchiveStatus,
    DataFile,
    JobResultEntry,
    JobResultObject,
    JobStatus,
    NewDatablock,
    NewOrigDatablock,
    RetrieveStatus,
    new_raw_dataset,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def scicat(scicat_settings, scicat_credentials):
    with ScicatClient(scicat_settings, scicat_credentials, backoff_s=0.01, retries=3) as client:
        yield client


def new_pid() -> str:
    return f"20.500.11935/{uuid.uuid4()}"


def make_dataset(scicat: ScicatClient) -> str:
    return scicat.create_dataset(new_raw_dataset("imaging", "client test", pid=new_pid())).pid


def files(*sizes: int) -> list[DataFile]:
    return [
        DataFile(path=f"raw/f{i}.tif", size=size, time="2024-05-01T12:00:00Z", chk=f"c{i}")
        for i, size in enumerate(sizes)
    ]


def datablock(name: str, *sizes: int) -> NewDatablock:
    return NewDatablock(
        archive_id=name,
        size=sum(sizes),
        packed_size=sum(sizes) + 1024,
        chk_alg="sha256",
        version="1",
        data_file_list=files(*sizes),
    )


def calls(entries: list[dict]) -> list[tuple[str, str, int]]:
    return [(e["method"], e["path"], e.get("status")) for e in entries]


def test_dataset_with_slash_in_pid_is_sent_encoded_and_found(scicat, scicat_dev):
    pid = make_dataset(scicat)
    assert scicat.get_dataset(pid).pid == pid
    encoded = pid.replace("/", "%2F")
    assert calls(scicat_dev.requests()) == [
        ("POST", "/api/v3/auth/login", 201),
        ("POST", "/api/v3/datasets", 201),
        ("GET", f"/api/v3/datasets/{encoded}", 200),
    ]
    assert scicat_dev.requests()[-1]["pid"] == pid


def test_token_is_reused_and_login_repeated_once_when_refused(scicat, scicat_dev):
    pid = make_dataset(scicat)
    for _ in range(3):
        scicat.get_dataset(pid)
    logins = [e for e in scicat_dev.requests() if e["path"].endswith("/auth/login")]
    assert len(logins) == 1
    assert logins[0]["body"]["password"] == "***"

    scicat_dev.expire_tokens()
    scicat.get_dataset(pid)
    assert calls(scicat_dev.requests()[-3:]) == [
        ("GET", f"/api/v3/datasets/{pid.replace('/', '%2F')}", 401),
        ("POST", "/api/v3/auth/login", 201),
        ("GET", f"/api/v3/datasets/{pid.replace('/', '%2F')}", 200),
    ]


def test_one_client_shared_by_threads_logs_in_once(scicat, scicat_dev):
    pid = make_dataset(scicat)
    scicat_dev.expire_tokens()
    fresh = ScicatClient(scicat.settings, scicat._credentials)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: fresh.get_dataset(pid).pid, range(16)))
    assert found == [pid] * 16
    assert sum(e["path"].endswith("/auth/login") for e in scicat_dev.requests()) == 2  # ours + the fresh client's


def test_wrong_password_names_user_but_not_password(scicat_settings, scicat_credentials):
    wrong = ScicatCredentials(scicat_credentials.username, "not-the-password")
    with ScicatClient(scicat_settings, wrong) as client, pytest.raises(ScicatError) as error:
        client.get_dataset("any")
    assert error.value.status_code == 401
    assert error.value.call == "login" and scicat_credentials.username in str(error.value)
    assert "not-the-password" not in str(error.value) and "not-the-password" not in repr(client)


def test_lifecycle_updates_send_the_complete_lifecycle(scicat, scicat_dev):
    """SciCat replaces the lifecycle on PATCH: every update carries all fields, so none falls back to its default."""
    pid = make_dataset(scicat)
    scicat.update_lifecycle(pid, "mark", is_on_central_disk=False)
    scicat.update_lifecycle(
        pid, "started", archive_status_message=ArchiveStatus.STARTED, archivable=False, retrievable=False
    )
    scicat.update_lifecycle(
        pid, "archived", archive_status_message=ArchiveStatus.DATASET_ON_ARCHIVE_DISK, retrievable=True
    )
    scicat.update_lifecycle(pid, "retrieved", retrieve_status_message=RetrieveStatus.DATASET_RETRIEVED)

    lifecycle = scicat.get_dataset(pid).datasetlifecycle
    assert (lifecycle.archive_status_message, lifecycle.retrieve_status_message) == (
        "datasetOnArchiveDisk",
        "datasetRetrieved",
    )
    assert (lifecycle.archivable, lifecycle.retrievable, lifecycle.is_on_central_disk) == (False, True, False)
    patches = [e["body"]["datasetlifecycle"] for e in scicat_dev.requests() if e["method"] == "PATCH"]
    assert len(patches) == 4 and all(patch["isOnCentralDisk"] is False for patch in patches[1:])
    assert patches[-1]["archiveStatusMessage"] == "datasetOnArchiveDisk" and patches[-1]["archivable"] is False


def test_lifecycle_updates_through_the_merging_endpoint_send_only_the_changes(secrets_dir, services_log_dir):
    with local_services.scicat_dev_server(secrets_dir, services_log_dir, datasetlifecycle_endpoint=True) as server:
        settings = ScicatSection(endpoint=server.url, lifecycle_merge_endpoint=True)
        with ScicatClient(settings, ScicatCredentials.from_secret_files(secrets_dir, environ={})) as client:
            pid = make_dataset(client)
            client.update_lifecycle(pid, "mark", is_on_central_disk=False)
            client.update_lifecycle(pid, "started", archive_status_message=ArchiveStatus.STARTED, archivable=False)
            lifecycle = client.get_dataset(pid).datasetlifecycle
        log = httpx.get(f"{server.url}/dev/requests").json()
    assert (lifecycle.archive_status_message, lifecycle.archivable, lifecycle.is_on_central_disk) == (
        "started",
        False,
        False,
    )
    patches = [(e["path"], e["body"]) for e in log if e["method"] == "PATCH"]
    assert [path.endswith("/datasetlifecycle") for path, _ in patches] == [True, True]
    assert [body for _, body in patches] == [
        {"isOnCentralDisk": False},
        {"archiveStatusMessage": "started", "archivable": False},
    ]
    assert not any(e["method"] == "GET" and e["path"].endswith(pid.replace("/", "%2F")) for e in log[:-1])


@pytest.fixture
def conflicting_lifecycle_client(secrets_dir, services_log_dir):
    """A client of a development server behaving like SciCat 4.19-4.23: an unchanged lifecycle update is a 409."""
    with local_services.scicat_dev_server(
        secrets_dir, services_log_dir, datasetlifecycle_endpoint=True, unchanged_lifecycle_conflict=True
    ) as server:
        settings = ScicatSection(endpoint=server.url, lifecycle_merge_endpoint=True)
        with ScicatClient(settings, ScicatCredentials.from_secret_files(secrets_dir, environ={})) as client:
            yield client, server.url


def test_a_retried_identical_lifecycle_update_succeeds_on_scicat_answering_409(conflicting_lifecycle_client):
    client, url = conflicting_lifecycle_client
    pid = make_dataset(client)
    archived = dict(archive_status_message=ArchiveStatus.DATASET_ON_ARCHIVE_DISK, archivable=False, retrievable=True)
    client.update_lifecycle(pid, "archived", **archived)

    client.update_lifecycle(pid, "archived (retried)", **archived)  # SciCat answers 409: it is so already

    conflicts = [e for e in httpx.get(f"{url}/dev/requests").json() if e.get("status") == 409]
    assert len(conflicts) == 1  # the retry did meet SciCat's 409
    lifecycle = client.get_dataset(pid).datasetlifecycle
    assert (lifecycle.archive_status_message, lifecycle.archivable, lifecycle.retrievable) == (
        "datasetOnArchiveDisk",
        False,
        True,
    )


def test_a_409_lifecycle_update_whose_values_do_not_hold_is_an_error_naming_them(conflicting_lifecycle_client):
    client, url = conflicting_lifecycle_client
    pid = make_dataset(client)
    httpx.post(f"{url}/dev/faults", json={"count": 1, "status": 409}).raise_for_status()

    with pytest.raises(ScicatError) as refused:
        client.update_lifecycle(pid, "archive started", archive_status_message=ArchiveStatus.STARTED, archivable=False)

    message = str(refused.value)
    assert refused.value.status_code == 409 and pid in message
    assert "archiveStatusMessage" in message and "'started'" in message and "'datasetCreated'" in message


def test_origdatablocks_are_created_and_read_per_dataset(scicat):
    pid, other = make_dataset(scicat), make_dataset(scicat)
    created = scicat.create_origdatablock(pid, NewOrigDatablock(size=30, data_file_list=files(10, 20)))
    scicat.create_origdatablock(other, NewOrigDatablock(size=5, data_file_list=files(5)))
    read = scicat.get_origdatablocks(pid)
    assert [b.id for b in read] == [created.id]
    assert read[0].dataset_id == pid
    assert [(f.path, f.size, f.chk) for f in read[0].data_file_list] == [
        ("raw/f0.tif", 10, "c0"),
        ("raw/f1.tif", 20, "c1"),
    ]


def test_datablocks_create_list_delete(scicat, scicat_dev):
    pid = make_dataset(scicat)
    first = scicat.create_datablock(pid, datablock("blocks/1.tar", 10, 20))
    second = scicat.create_datablock(pid, datablock("blocks/2.tar", 7))
    assert {b.archive_id for b in scicat.get_datablocks(pid)} == {"blocks/1.tar", "blocks/2.tar"}
    assert first.dataset_id == pid and first.packed_size == 1054

    scicat.delete_datablock(pid, first.id)
    assert [b.id for b in scicat.get_datablocks(pid)] == [second.id]
    scicat.delete_datablock(pid, first.id)  # SciCat answers an empty 200 when nothing matched
    assert [b.id for b in scicat.get_datablocks(pid)] == [second.id]
    deletes = [e for e in scicat_dev.requests() if e["method"] == "DELETE"]
    assert [e["status"] for e in deletes] == [200, 200]


def test_unknown_dataset_is_404_without_retry(scicat, scicat_dev):
    pid = new_pid()
    assert scicat.get_origdatablocks(pid) == []  # SciCat lists nothing for an unknown dataset
    with pytest.raises(ScicatError) as error:
        scicat.get_dataset(pid)
    assert error.value.status_code == 404
    assert f"'get dataset' for dataset {pid}" in str(error.value) and "Not Found" in str(error.value)
    assert [e["status"] for e in scicat_dev.requests() if e.get("pid") == pid] == [200, 404]  # not retried


def test_503_is_retried_with_growing_backoff(scicat_settings, scicat_credentials, scicat_dev):
    delays = []

    def sleep(seconds):
        delays.append(seconds)
        time.sleep(seconds)

    with ScicatClient(scicat_settings, scicat_credentials, backoff_s=0.02, retries=3, sleep=sleep) as client:
        pid = make_dataset(client)
        scicat_dev.fail_next(2)
        assert client.get_dataset(pid).pid == pid
    assert [e["status"] for e in scicat_dev.requests() if e.get("pid") == pid] == [503, 503, 200]
    assert delays == [0.02, 0.04]


def test_retries_give_up_with_scicats_answer(scicat, scicat_dev):
    scicat.login()
    scicat_dev.fail_next(10, status=502)
    with pytest.raises(ScicatError, match=r"HTTP 502: .*fault injected.*after 4 tries") as error:
        scicat.update_job_status("some-job", JobStatus.IN_PROGRESS)
    assert error.value.status_code == 502 and "update job status to inProgress" in str(error.value)
    scicat_dev.fail_next(0)
    assert len([e for e in scicat_dev.requests() if e.get("fault")]) == 4


def test_connection_refused_is_retried_then_reported(scicat_credentials):
    settings = ScicatSection(endpoint=f"http://127.0.0.1:{local_services.free_port()}")
    with (
        ScicatClient(settings, scicat_credentials, retries=2, backoff_s=0.01) as client,
        pytest.raises(ScicatError) as error,
    ):
        client.get_job("j1")
    assert "no answer" in str(error.value) and "after 3 tries" in str(error.value)


def test_dev_server_answers_like_scicat_to_bad_requests(scicat, scicat_url):
    pid = make_dataset(scicat)
    path = f"{scicat_url}/api/v3/datasets/{pid.replace('/', '%2F')}"
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    token = scicat.login()
    auth = {"Authorization": f"Bearer {token}"}
    refused = httpx.post(path + "/datablocks", json={"size": "big"}, headers=auth)
    assert refused.status_code == 400 and "size must be an integer number" in refused.text
    assert httpx.get(f"{scicat_url}/api/v3/datasets/{pid}", headers=auth).status_code == 404  # unencoded '/'


def test_job_status_v3_and_dataset_list(scicat, scicat_dev):
    pids = [make_dataset(scicat), make_dataset(scicat)]
    job = scicat.create_job("archive", pids)
    assert scicat.get_job_dataset_pids(job.id) == pids
    scicat.update_job_status(job.id, JobStatus.IN_PROGRESS)
    assert scicat.get_job(job.id).job_status_message == "inProgress"
    patch = [e for e in scicat_dev.requests() if e["method"] == "PATCH"][0]
    assert patch["path"] == f"/api/v3/jobs/{job.id}" and patch["jobId"] == job.id
    assert patch["body"] == {"jobStatusMessage": "inProgress"}


def test_job_status_v4_with_result_on_its_own_prefix(scicat_url, scicat_credentials, scicat_dev):
    settings = ScicatSection(endpoint=scicat_url, jobs_api_prefix="/api/v4/", job_status_schema="v4")
    result = JobResultObject(
        result=[
            JobResultEntry(dataset_id="20.500/x", name="1.tar", size=10, archive_id="x/1.tar", url="http://s3/x?sig=1"),
        ]
    )
    with ScicatClient(settings, scicat_credentials) as client:
        job = client.create_job("retrieve", [make_dataset(client)])
        client.update_job_status(job.id, JobStatus.FINISHED_SUCCESSFUL, "1 dataset retrieved", result)
        stored = client.get_job(job.id)
    assert (stored.status_code, stored.status_message) == ("finishedSuccessful", "1 dataset retrieved")
    assert JobResultObject.model_validate(stored.job_result_object) == result
    assert [e["path"] for e in scicat_dev.requests() if "/jobs" in e["path"]] == [
        "/api/v4/jobs",
        f"/api/v4/jobs/{job.id}",
        f"/api/v4/jobs/{job.id}",
    ]


def test_unknown_job_is_refused_naming_the_job(scicat):
    with pytest.raises(
        ScicatError, match=r"'update job status to inProgress' for job no-such-job failed: HTTP 400.*Invalid job id"
    ):
        scicat.update_job_status("no-such-job", JobStatus.IN_PROGRESS)
