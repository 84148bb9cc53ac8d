"""The SciCat development server over HTTP: as strict as SciCat (see docs/scicat.md, "The development server").

Raw HTTP on purpose: these tests pin down what the server accepts, independent of the archiver's client.
"""

import json
import uuid

import pytest

from archiver import local_services
from archiver.config.secrets import read_secret, secret_spec

pytestmark = pytest.mark.integration

FILE = {"path": "raw/a.tif", "size": 10, "time": "2024-05-01T12:00:00Z", "chk": "c0"}
DATABLOCK = {
    "archiveId": "x/1.tar",
    "size": 10,
    "packedSize": 1034,
    "chkAlg": "sha256",
    "version": "1",
    "dataFileList": [FILE],
}


def raw_dataset(**fields) -> dict:
    return {
        "pid": f"20.500.11935/{uuid.uuid4()}",
        "type": "raw",
        "ownerGroup": "imaging",
        "owner": "Ada",
        "contactEmail": "ada@example.org",
        "sourceFolder": "/data/ada",
        "creationTime": "2024-05-01T12:00:00Z",
        "principalInvestigator": "Ada",
        "creationLocation": "/site/beamline",
        **fields,
    }


def encoded(pid: str) -> str:
    return pid.replace("/", "%2F")


def new_dataset(dev, **fields) -> str:
    response = dev.call("POST", "/api/v3/datasets", json=raw_dataset(**fields))
    assert response.status_code == 201, response.text
    return response.json()["pid"]


def dataset_path(pid: str, rest: str = "") -> str:
    return f"/api/v3/datasets/{encoded(pid)}{rest}"


def validation_messages(response) -> list[str]:
    """The messages of a 400: a list from NestJS's ValidationPipe, a JSON string from SciCat's dataset checks."""
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    if isinstance(message, list):
        return message
    return [text for error in json.loads(message) for text in error["constraints"].values()]


# --- unknown and missing properties ------------------------------------------------


def test_unknown_dataset_property_is_refused_naming_it(scicat_dev):
    response = scicat_dev.call("POST", "/api/v3/datasets", json=raw_dataset(colour="blue"))
    assert validation_messages(response) == ["property colour should not exist"]
    pid = new_dataset(scicat_dev)
    response = scicat_dev.call("PATCH", dataset_path(pid), json={"pid": "other", "comment": "ok"})
    assert validation_messages(response) == ["property pid should not exist"]
    assert scicat_dev.call("GET", dataset_path(pid)).json().get("comment") is None  # nothing applied


def test_dataset_creation_needs_scicats_required_fields(scicat_dev):
    messages = validation_messages(scicat_dev.call("POST", "/api/v3/datasets", json={"type": "raw", "owner": "Ada"}))
    assert set(messages) == {
        "ownerGroup must be a string",
        "Expected an email or a list of semicolon separated emails, got undefined",
        "sourceFolder must be a string",
        "creationTime must be a valid ISO 8601 date string",
        "principalInvestigator must be a string",
        "creationLocation must be a string",
    }
    local = scicat_dev.call("POST", "/api/v3/datasets", json=raw_dataset(contactEmail="archiver@localhost"))
    assert validation_messages(local) == [
        "Expected an email or a list of semicolon separated emails, got archiver@localhost"
    ]
    two = scicat_dev.call("POST", "/api/v3/datasets", json=raw_dataset(contactEmail="a@example.org; b@example.org"))
    assert two.status_code == 201
    response = scicat_dev.call("POST", "/api/v3/datasets", json=raw_dataset(type="processed"))
    assert response.status_code == 400 and response.json()["message"] == "Wrong dataset type!"


@pytest.mark.parametrize(
    "kind, body, expected",
    [
        (
            "origdatablocks",
            {"size": 10, "dataFileList": [FILE], "datasetId": "any"},
            ["property datasetId should not exist"],
        ),
        (
            "origdatablocks",
            {"size": 10, "dataFileList": [FILE], "ownerGroup": "g"},
            ["property ownerGroup should not exist"],
        ),
        ("datablocks", {**DATABLOCK, "datasetId": "any"}, ["property datasetId should not exist"]),
        (
            "datablocks",
            {**DATABLOCK, "dataFileList": [{**FILE, "md5": "x"}]},
            ["dataFileList.0.property md5 should not exist"],
        ),
    ],
)
def test_unknown_block_property_is_refused_naming_it(scicat_dev, kind, body, expected):
    pid = new_dataset(scicat_dev)
    assert validation_messages(scicat_dev.call("POST", dataset_path(pid, f"/{kind}"), json=body)) == expected
    assert scicat_dev.call("GET", dataset_path(pid, f"/{kind}")).json() == []


def test_blocks_need_their_required_fields(scicat_dev):
    pid = new_dataset(scicat_dev)
    messages = validation_messages(scicat_dev.call("POST", dataset_path(pid, "/datablocks"), json={"chkAlg": "sha256"}))
    assert messages == [
        "archiveId must be a string",
        "size must be an integer number",
        "packedSize must be an integer number",
        "version must be a string",
        "dataFileList must be an array",
    ]
    no_time = {"size": 10, "dataFileList": [{"path": "a", "size": 10}]}
    messages = validation_messages(scicat_dev.call("POST", dataset_path(pid, "/origdatablocks"), json=no_time))
    assert messages == ["dataFileList.0.time must be a valid ISO 8601 date string"]
    empty = {"size": 0, "dataFileList": []}
    assert validation_messages(scicat_dev.call("POST", dataset_path(pid, "/origdatablocks"), json=empty)) == [
        "dataFileList should not be empty"
    ]


def test_blocks_are_stored_under_their_dataset_with_its_groups(scicat_dev):
    pid = new_dataset(scicat_dev, accessGroups=["team"])
    block = scicat_dev.call("POST", dataset_path(pid, "/datablocks"), json=DATABLOCK)
    assert block.status_code == 201
    stored = block.json()
    assert (stored["datasetId"], stored["ownerGroup"], stored["accessGroups"]) == (pid, "imaging", ["team"])
    assert [b["id"] for b in scicat_dev.call("GET", dataset_path(pid, "/datablocks")).json()] == [stored["id"]]
    deleted = scicat_dev.call("DELETE", dataset_path(pid, f"/datablocks/{stored['id']}"))
    assert deleted.status_code == 200 and deleted.json()["archiveId"] == "x/1.tar"
    assert scicat_dev.call("GET", dataset_path(pid, "/datablocks")).json() == []
    again = scicat_dev.call("DELETE", dataset_path(pid, f"/datablocks/{stored['id']}"))
    assert (again.status_code, again.content) == (200, b"")  # SciCat: nothing to delete is not an error


def test_unknown_job_property_is_refused_on_v4_and_dropped_on_v3(scicat_dev):
    pid = new_dataset(scicat_dev)
    params = {"datasetList": [{"pid": pid, "files": []}]}
    response = scicat_dev.call("POST", "/api/v4/jobs", json={"type": "archive", "jobParams": params, "priority": 1})
    assert validation_messages(response) == ["property priority should not exist"]
    v3 = scicat_dev.call(
        "POST", "/api/v3/jobs", json={"type": "archive", "datasetList": params["datasetList"], "priority": 1}
    )
    assert v3.status_code == 201
    assert "priority" not in scicat_dev.state()["jobs"][v3.json()["id"]]


def test_v3_job_takes_the_dataset_list_from_the_top_level_only(scicat_dev):
    pid = new_dataset(scicat_dev)
    entry = {"pid": pid, "files": []}
    top = scicat_dev.call("POST", "/api/v3/jobs", json={"type": "archive", "datasetList": [entry]}).json()
    nested = scicat_dev.call(
        "POST", "/api/v3/jobs", json={"type": "archive", "jobParams": {"datasetList": [entry]}}
    ).json()
    assert top["datasetList"] == [entry]
    assert nested["datasetList"] == []  # SciCat removes jobParams.datasetList from a v3 job


def test_job_dataset_list_entries_are_checked(scicat_dev):
    pid = new_dataset(scicat_dev)
    bad = {"type": "archive", "jobParams": {"datasetList": [{"pid": pid}]}}
    assert validation_messages(scicat_dev.call("POST", "/api/v4/jobs", json=bad)) == [
        "jobParams.datasetList.0.files must be an array"
    ]
    unknown = {"type": "archive", "jobParams": {"datasetList": [{"pid": "no/such", "files": []}]}}
    response = scicat_dev.call("POST", "/api/v4/jobs", json=unknown)
    assert response.status_code == 400 and "no/such" in response.json()["message"]
    other_type = {"type": "reboot", "jobParams": {}}
    response = scicat_dev.call("POST", "/api/v4/jobs", json=other_type)
    assert response.status_code == 400 and "reboot" in response.json()["message"]


# --- jobs: one store, two shapes ------------------------------------------------------


def test_jobs_show_v3_and_v4_shapes_of_one_store(scicat_dev):
    pid = new_dataset(scicat_dev)
    entry = {"pid": pid, "files": []}
    created = scicat_dev.call(
        "POST",
        "/api/v4/jobs",
        json={"type": "archive", "jobParams": {"datasetList": [entry]}, "contactEmail": "ada@example.org"},
    )
    assert created.status_code == 201
    job_id = created.json()["id"]
    v4 = scicat_dev.call("GET", f"/api/v4/jobs/{job_id}").json()
    v3 = scicat_dev.call("GET", f"/api/v3/jobs/{job_id}").json()
    assert v4["jobParams"]["datasetList"] == [entry] and "datasetList" not in v4
    assert (v4["statusCode"], v4["statusMessage"], v4["ownerGroup"]) == ("jobSubmitted", "Job submitted.", "imaging")
    assert v3["datasetList"] == [entry] and "datasetList" not in v3["jobParams"]
    assert (v3["jobStatusMessage"], v3["emailJobInitiator"]) == ("jobSubmitted", "ada@example.org")
    assert "statusCode" not in v3

    updated = scicat_dev.call("PATCH", f"/api/v3/jobs/{job_id}", json={"jobStatusMessage": "inProgress"})
    assert updated.json()["jobStatusMessage"] == "inProgress"
    v4 = scicat_dev.call("GET", f"/api/v4/jobs/{job_id}").json()
    assert (v4["statusCode"], v4["statusMessage"]) == ("inProgress", "inProgress")  # SciCat copies it into both


def test_v4_status_update_needs_status_code_and_message(scicat_dev):
    job_id = scicat_dev.call("POST", "/api/v4/jobs", json={"type": "retrieve", "jobParams": {}}).json()["id"]
    path = f"/api/v4/jobs/{job_id}"
    assert validation_messages(scicat_dev.call("PATCH", path, json={"statusCode": "inProgress"})) == [
        "statusMessage must be a string"
    ]
    assert validation_messages(scicat_dev.call("PATCH", path, json={"jobStatusMessage": "inProgress"})) == [
        "property jobStatusMessage should not exist",
        "statusCode must be a string",
        "statusMessage must be a string",
    ]
    result = {"result": [{"datasetId": "p", "name": "1.tar", "size": 1, "archiveId": "a", "url": "http://s3/a"}]}
    done = scicat_dev.call(
        "PATCH",
        path,
        json={"statusCode": "finishedSuccessful", "statusMessage": "1 dataset retrieved", "jobResultObject": result},
    )
    assert done.status_code == 200
    assert (done.json()["statusCode"], done.json()["jobResultObject"]) == ("finishedSuccessful", result)


def test_unknown_job_update_is_invalid_job_id(scicat_dev):
    for prefix, body in (
        ("/api/v3", {"jobStatusMessage": "inProgress"}),
        ("/api/v4", {"statusCode": "a", "statusMessage": "b"}),
    ):
        response = scicat_dev.call("PATCH", f"{prefix}/jobs/no-such-job", json=body)
        assert (response.status_code, response.json()["message"]) == (400, "Invalid job id.")


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/api/v4/auth/login"),
        ("GET", "/api/v4/datasets/x"),
        ("POST", "/api/v4/datasets"),
        ("GET", "/api/v4/datasets/x/origdatablocks"),
        ("POST", "/api/v4/datasets/x/datablocks"),
    ],
)
def test_only_jobs_are_served_under_api_v4(scicat_dev, method, path):
    assert scicat_dev.call(method, path, json={}).status_code == 404


# --- the dataset lifecycle --------------------------------------------------------------


def test_lifecycle_patch_replaces_the_lifecycle_with_scicats_defaults(scicat_dev):
    pid = new_dataset(scicat_dev)
    lifecycle = scicat_dev.call("GET", dataset_path(pid)).json()["datasetlifecycle"]
    assert (lifecycle["archivable"], lifecycle["retrievable"], lifecycle["archiveStatusMessage"]) == (
        True,
        False,
        "datasetCreated",
    )

    on_disk = {"archiveStatusMessage": "datasetOnArchiveDisk", "archivable": False, "retrievable": True}
    assert scicat_dev.call("PATCH", dataset_path(pid), json={"datasetlifecycle": on_disk}).status_code == 200
    after = scicat_dev.call("PATCH", dataset_path(pid), json={"datasetlifecycle": {"retrieveStatusMessage": "started"}})
    lifecycle = after.json()["datasetlifecycle"]
    assert lifecycle["retrieveStatusMessage"] == "started"
    assert (lifecycle["archivable"], lifecycle["retrievable"], lifecycle["archiveStatusMessage"]) == (
        True,
        False,
        "datasetCreated",
    )
    assert (lifecycle["isOnCentralDisk"], lifecycle["retrieveIntegrityCheck"], lifecycle["archiveReturnMessage"]) == (
        True,
        False,
        {},
    )


def test_lifecycle_in_a_dataset_patch_keeps_known_fields_and_checks_their_types(scicat_dev):
    pid = new_dataset(scicat_dev)
    kept = scicat_dev.call(
        "PATCH", dataset_path(pid), json={"datasetlifecycle": {"archivable": False, "colour": "blue"}}
    )
    assert kept.json()["datasetlifecycle"]["archivable"] is False and "colour" not in kept.json()["datasetlifecycle"]
    wrong = scicat_dev.call("PATCH", dataset_path(pid), json={"datasetlifecycle": {"archivable": "no"}})
    assert validation_messages(wrong) == ["datasetlifecycle.archivable must be a boolean value"]


def test_merging_lifecycle_endpoint_is_404_unless_switched_on(scicat_dev):
    pid = new_dataset(scicat_dev)
    assert (
        scicat_dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json={"archivable": False}).status_code == 404
    )


@pytest.fixture
def lifecycle_server(secrets_dir, services_log_dir, scicat_dev_for):
    with local_services.scicat_dev_server(secrets_dir, services_log_dir, datasetlifecycle_endpoint=True) as server:
        yield scicat_dev_for(server.url, secrets_dir)


def test_merging_lifecycle_endpoint_merges_when_switched_on(lifecycle_server):
    dev = lifecycle_server
    pid = new_dataset(dev)
    first = dev.call(
        "PATCH", dataset_path(pid, "/datasetlifecycle"), json={"archiveStatusMessage": "started", "archivable": False}
    )
    assert first.status_code == 200
    merged = dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json={"retrievable": True}).json()
    assert (merged["archiveStatusMessage"], merged["archivable"], merged["retrievable"]) == ("started", False, True)
    assert dev.call("GET", dataset_path(pid)).json()["datasetlifecycle"] == merged
    reset = dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json={"archivable": None}).json()
    assert reset["archivable"] is True  # null: back to the default
    unknown = dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json={"colour": "blue"})
    assert validation_messages(unknown) == ["property colour should not exist"]


def test_unchanged_lifecycle_update_is_409_only_with_the_4_19_to_4_23_quirk(
    secrets_dir, services_log_dir, scicat_dev_for, lifecycle_server
):
    update = {"archiveStatusMessage": "started", "archivable": False}
    with local_services.scicat_dev_server(
        secrets_dir, services_log_dir, datasetlifecycle_endpoint=True, unchanged_lifecycle_conflict=True
    ) as server:
        dev = scicat_dev_for(server.url, secrets_dir)
        pid = new_dataset(dev)
        assert dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json=update).status_code == 200
        stored = dev.call("GET", dataset_path(pid)).json()["datasetlifecycle"]
        again = dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json=update)
        assert again.status_code == 409, again.text
        assert dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json={}).status_code == 409
        assert dev.call("GET", dataset_path(pid)).json()["datasetlifecycle"] == stored
        changed = dev.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json={**update, "retrievable": True})
        assert changed.status_code == 200 and changed.json()["retrievable"] is True
    # without the quirk (SciCat >= 4.24) the same update again is a 200
    pid = new_dataset(lifecycle_server)
    for _ in range(2):
        assert lifecycle_server.call("PATCH", dataset_path(pid, "/datasetlifecycle"), json=update).status_code == 200


# --- the job action (SciCat's url action) -----------------------------------------------------


def serve_with_action(secrets_dir, log_dir, **action):
    return local_services.scicat_dev_server(secrets_dir, log_dir, **action)


def test_new_job_is_sent_with_the_default_body_as_text_plain(
    http_receiver, secrets_dir, services_log_dir, scicat_dev_for
):
    with serve_with_action(secrets_dir, services_log_dir, archiver_url=http_receiver.url + "/jobs") as server:
        dev = scicat_dev_for(server.url, secrets_dir)
        pid = new_dataset(dev)
        job = dev.call(
            "POST", "/api/v3/jobs", json={"type": "archive", "datasetList": [{"pid": pid, "files": []}]}
        ).json()
        forward = dev.requests()[-1]["forward"]
    assert len(http_receiver.received) == 1
    sent = http_receiver.received[0]
    assert (sent["method"], sent["path"]) == ("POST", "/jobs")
    assert sent["headers"]["Content-Type"] == "text/plain;charset=UTF-8"
    assert sent["headers"]["Authorization"] == read_secret(secret_spec("ARCHIVER_API_AUTH_FILE"), secrets_dir, {})
    body = json.loads(sent["body"])  # {{{jsonify job}}}: the stored (v4) job
    assert (body["id"], body["type"], body["statusCode"]) == (job["id"], "archive", "jobSubmitted")
    assert body["jobParams"]["datasetList"] == [{"pid": pid, "files": []}]
    assert forward["status"] == 201 and forward["answer"] == '{"uuid": "run-1", "name": "archive-run"}'


def test_job_action_method_headers_and_body_are_templates(http_receiver, secrets_dir, services_log_dir, scicat_dev_for):
    action = {
        "archiver_url": http_receiver.url + "/hook/{{job.id}}",
        "archiver_method": "PUT",
        "archiver_headers": {"X-Job-Type": "{{job.type}}", "Content-Type": "application/json"},
        "archiver_body": '{"job": "{{{job.id}}}", "status": "{{job.statusCode}}"}',
    }
    with serve_with_action(secrets_dir, services_log_dir, **action) as server:
        dev = scicat_dev_for(server.url, secrets_dir)
        job = dev.call("POST", "/api/v4/jobs", json={"type": "retrieve", "jobParams": {}}).json()
    sent = http_receiver.received[0]
    assert (sent["method"], sent["path"]) == ("PUT", f"/hook/{job['id']}")
    assert sent["headers"]["X-Job-Type"] == "retrieve" and sent["headers"]["Content-Type"] == "application/json"
    assert json.loads(sent["body"]) == {"job": job["id"], "status": "jobSubmitted"}


def test_a_failing_job_action_fails_the_creation_but_the_job_is_kept(
    make_http_receiver, secrets_dir, services_log_dir, scicat_dev_for
):
    refusing = make_http_receiver(status=415)
    with serve_with_action(secrets_dir, services_log_dir, archiver_url=refusing.url + "/jobs") as server:
        dev = scicat_dev_for(server.url, secrets_dir)
        response = dev.call("POST", "/api/v4/jobs", json={"type": "retrieve", "jobParams": {}})
        jobs = dev.state()["jobs"]
    assert response.status_code == 415 and "Got response" in response.json()["message"]
    assert [job["type"] for job in jobs.values()] == ["retrieve"]


def test_an_unsupported_template_is_refused_at_start(secrets_dir, services_log_dir):
    with pytest.raises(RuntimeError, match=r"env\.SECRET.*not supported"):
        with serve_with_action(secrets_dir, services_log_dir, archiver_url="http://127.0.0.1:9/{{env.SECRET}}"):
            pass


# --- who a token belongs to (users/my/self, users/my/identity) -----------------------


def test_user_endpoints_need_a_known_token_and_tell_the_groups_as_scicat_does(scicat_dev):
    """SciCat (users.controller.ts): both need an authenticated user (401 otherwise); `self` is a ReturnedUserDto
    without the password, `identity` a UserIdentity whose profile.accessGroups are the user's groups."""
    import httpx

    for path in ("/api/v3/users/my/self", "/api/v3/users/my/identity"):
        assert httpx.get(scicat_dev.url + path).status_code == 401
        assert httpx.get(scicat_dev.url + path, headers={"Authorization": "Bearer made-up"}).status_code == 401
    name = f"user-{uuid.uuid4().hex[:8]}"
    httpx.post(
        f"{scicat_dev.url}/dev/users", json={"username": name, "password": "pw", "groups": ["g1", "g2"]}
    ).raise_for_status()
    assert (
        httpx.post(f"{scicat_dev.url}/api/v3/auth/login", json={"username": name, "password": "wrong"}).status_code
        == 401
    )
    token = httpx.post(f"{scicat_dev.url}/api/v3/auth/login", json={"username": name, "password": "pw"}).json()[
        "access_token"
    ]
    headers = {"Authorization": f"Bearer {token}"}

    me = httpx.get(f"{scicat_dev.url}/api/v3/users/my/self", headers=headers).json()
    identity = httpx.get(f"{scicat_dev.url}/api/v3/users/my/identity", headers=headers).json()

    assert set(me) == {"id", "username", "email", "authStrategy"} and me["username"] == name
    assert identity["userId"] == me["id"] and identity["profile"]["accessGroups"] == ["g1", "g2"]
    assert "password" not in json.dumps([me, identity])
