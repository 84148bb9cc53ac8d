"""Uploads through the archiver API's presigned URLs: the API served for real, the test S3 server over HTTP,
the strict SciCat development server, archival and retrieval run for real. The uploading side holds no S3
credentials: it sees only the API and presigned URLs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from archiver.config.secrets import init_secrets
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing.naming import landing_prefix
from archiver.scicat.models import DataFile, NewOrigDatablock, new_raw_dataset
from archiver.storage import multipart
from archiver.upload_command import UploadApi, upload_dataset
from tests.integration.test_api import ROOT, deployments, start_api  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

MIB = 2**20
SERVICE_TOKEN = "service-token-" + "x" * 24


@contextlib.contextmanager
def running_upload_api(tmp: Path, prefect_api_url: str, deployments, settings_cache_s: float) -> Iterator[str]:
    secrets = tmp / "secrets"
    init_secrets(secrets)
    (secrets / "uploadaccounts.txt").write_text(f"# test\ningest-robot:{SERVICE_TOKEN}:robots\n")
    with start_api(
        tmp, secrets, prefect_api_url, deployments, API_UPLOAD_SETTINGS_CACHE_S=str(settings_cache_s)
    ) as server:
        yield server.url + ROOT


@pytest.fixture(scope="module")
def upload_api(tmp_path_factory, prefect_api_url, deployments):
    """The archiver API reading the settings from Prefect on every request (each test seeds its own)."""
    with running_upload_api(tmp_path_factory.mktemp("upload-api"), prefect_api_url, deployments, 0) as url:
        yield url


@pytest.fixture
def uploads(pipeline, upload_api):
    pipeline.set_settings(UPLOAD_PART_SIZE_MB=5)
    return pipeline


class Uploader:
    """A SciCat user of the development server, with a token, in the given groups."""

    def __init__(self, pipeline, api_url: str, name: str, groups: list[str]):
        dev = pipeline.scicat_dev.url
        password = "pw-" + name
        httpx.post(
            f"{dev}/dev/users", json={"username": name, "password": password, "groups": groups}
        ).raise_for_status()
        answer = httpx.post(f"{dev}/api/v3/auth/login", json={"username": name, "password": password})
        self.token = answer.raise_for_status().json()["access_token"]
        self.api = UploadApi(api_url, self.token)
        self.http = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)


def make_files(folder: Path, sizes: dict[str, int]) -> dict[str, Path]:
    files = {}
    for name, size in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        files[name] = path
    return files


def register(pipeline, group: str, files: dict[str, Path], readers: tuple[str, ...] = ()) -> str:
    """A raw dataset owned by `group` (read by `readers` too) with an origdatablock listing `files` (sha256),
    as an ingestor registers it."""
    total = sum(p.stat().st_size for p in files.values())
    dataset = new_raw_dataset(group, "upload test", size=total, number_of_files=len(files))
    dataset = dataset.model_copy(update={"access_groups": [group, *readers]})
    pid = pipeline.scicat.create_dataset(dataset).pid
    entries = [
        DataFile(
            path=name, size=p.stat().st_size, time=datetime.now(UTC), chk=hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for name, p in files.items()
    ]
    pipeline.scicat.create_origdatablock(pid, NewOrigDatablock(size=total, chk_alg="sha256", data_file_list=entries))
    return pid


def landing_state(pipeline, pid: str) -> tuple[list[str], list[str]]:
    """Objects and unfinished uploads below the dataset's landing prefix."""
    bucket, prefix = pipeline.settings.s3.landingzone_bucket, landing_prefix(pid)
    uploads = pipeline.s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return pipeline.landing_keys(pid), sorted(u["Key"] for u in uploads)


def test_multi_part_upload_through_presigned_urls_archives_and_retrieves_byte_identical(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"a.bin": 11 * MIB + 3, "sub/b.bin": 11 * MIB, "c.txt": 1234})
    pid = register(uploads, "group-a", files)
    user = Uploader(uploads, upload_api, "alice", ["group-a", "other"])

    report = upload_dataset(user.api, pid, files, parallel=3, archive=True)

    assert report.parts_put == 3 + 3 + 1  # 5 MiB parts: 11 MiB files in three parts, the small one in one
    assert sorted(report.files_completed) == sorted(files)
    assert landing_state(uploads, pid) == (sorted(landing_prefix(pid) + n for n in files), [])
    lifecycle = uploads.scicat.get_dataset(pid).datasetlifecycle
    assert lifecycle.archivable is True
    job_id = report.finalized["jobId"]
    uploads.set_settings(ARCHIVER_TARGET_SIZE_MB=16)  # a few datablocks, not one per MB
    job = uploads.job(job_id)
    assert job["type"] == "archive" and [e["pid"] for e in job["datasetList"]] == [pid]

    archive_datasets_flow(job_id=job_id)
    assert uploads.job(job_id)["jobStatusMessage"] == "finishedSuccessful"
    retrieve_job = uploads.new_job("retrieve", [pid])
    retrieve_datasets_flow(job_id=retrieve_job)

    retrieved = {}
    for entry in uploads.job(retrieve_job)["jobResultObject"]["result"]:
        content = httpx.get(entry["url"], timeout=60).raise_for_status().content
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            for member in tar.getmembers():
                retrieved[member.name] = tar.extractfile(member).read()
    assert retrieved == {name: path.read_bytes() for name, path in files.items()}


def test_an_archived_dataset_takes_no_upload_nor_finalize_whatever_its_lifecycle_says(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"f1.bin": 6 * MIB + 5, "f2.txt": 300})
    pid = register(uploads, "group-w", files)
    owner = Uploader(uploads, upload_api, "wanda", ["group-w"])
    report = upload_dataset(owner.api, pid, files, archive=True)
    archive_datasets_flow(job_id=report.finalized["jobId"])
    registered = uploads.scicat.get_datablocks(pid)
    assert registered and uploads.landing_keys(pid) == []
    # The owner's ordinary dataset PATCH: SciCat replaces the lifecycle, archiveStatusMessage is datasetCreated again
    dev = uploads.scicat_dev.url
    patched = httpx.patch(
        f"{dev}/api/v3/datasets/{quote(pid, safe='')}",
        json={"datasetlifecycle": {"retrievable": True}},
        headers={"Authorization": f"Bearer {owner.token}"},
    )
    assert patched.status_code == 200, patched.text
    lifecycle = uploads.scicat.get_dataset(pid).datasetlifecycle
    assert lifecycle.archive_status_message == "datasetCreated" and lifecycle.archivable is True
    jobs_before = len(uploads.scicat_dev.state()["jobs"])

    calls = {
        "start": ("/uploads", {"pid": pid, "files": [{"path": "f1.bin", "size": 6 * MIB + 5}]}),
        "resume": ("/uploads/resume", {"pid": pid, "path": "f1.bin"}),
        "complete": (
            "/uploads/complete",
            {"pid": pid, "path": "f1.bin", "uploadId": "any", "parts": [{"partNumber": 1, "etag": "0" * 32}]},
        ),
        "finalize": ("/uploads/finalize", {"pid": pid, "archive": True}),
    }
    for name, (path, body) in calls.items():
        answer = owner.http.post(path, json=body)
        assert answer.status_code == 409, (name, answer.text)
        detail = answer.json()["detail"]
        assert f"dataset {pid!r} is archived: {len(registered)} datablock(s) registered" in detail, (name, detail)
        assert "a changed dataset is a new dataset in SciCat" in detail

    assert landing_state(uploads, pid) == ([], [])
    assert uploads.scicat.get_dataset(pid).datasetlifecycle == lifecycle  # finalize did not mark it archivable
    assert len(uploads.scicat_dev.state()["jobs"]) == jobs_before
    assert [b.id for b in uploads.scicat.get_datablocks(pid)] == [b.id for b in registered]


class Interrupted(Exception):
    pass


def test_interrupted_upload_resumes_sending_only_the_missing_parts(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"one.bin": 11 * MIB, "two.bin": 11 * MIB})
    pid = register(uploads, "group-r", files)
    user = Uploader(uploads, upload_api, "rita", ["group-r"])
    sent = []

    def stop_after_four(path, number, size):
        sent.append((path, number))
        if len(sent) == 4:
            raise Interrupted()

    with pytest.raises(Interrupted):
        upload_dataset(user.api, pid, files, parallel=1, on_part=stop_after_four)
    status = user.api.status(pid)
    assert status["complete"] is False
    # one.bin's three parts went first and it was completed; of two.bin's, the part that stopped the run and
    # any already handed to the (single) worker are on S3, the others not
    files_state = {f["path"]: f for f in status["files"]}
    assert files_state["one.bin"]["state"] == "uploaded"
    held = {("two.bin", d["partNumber"]) for d in files_state["two.bin"]["partsDone"]}
    assert files_state["two.bin"]["state"] == "uploading" and 1 <= len(held) < 3

    resent = []
    report = upload_dataset(
        user.api,
        pid,
        files,
        parallel=2,
        finalize=True,
        on_part=lambda path, number, size: resent.append((path, number)),
    )

    assert report.parts_put == len(resent) == 3 - len(held)
    assert not set(resent) & held and not {p for p in resent if p[0] == "one.bin"}
    assert user.api.status(pid)["complete"] is True
    assert uploads.scicat.get_dataset(pid).datasetlifecycle.archivable is True
    for name, path in files.items():
        stored = uploads.s3.get_object(Bucket=uploads.settings.s3.landingzone_bucket, Key=landing_prefix(pid) + name)
        assert stored["Body"].read() == path.read_bytes()


def test_finalize_refuses_missing_and_wrong_size_files(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"kept.bin": 6 * MIB, "missing.bin": 2000, "short.bin": 3000})
    pid = register(uploads, "group-f", files)
    user = Uploader(uploads, upload_api, "fred", ["group-f"])
    upload_dataset(user.api, pid, {"kept.bin": files["kept.bin"]})
    bucket = uploads.settings.s3.landingzone_bucket
    uploads.s3.put_object(Bucket=bucket, Key=landing_prefix(pid) + "short.bin", Body=b"x" * 10)

    answer = user.http.post("/uploads/finalize", json={"pid": pid, "archive": True})

    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert "missing.bin" in detail and "short.bin (10 bytes, listed 3000)" in detail
    assert uploads.scicat.get_dataset(pid).datasetlifecycle.archive_status_message != "isOnCentralDisk"
    # Other tests' jobs share the server, some with an empty datasetList (refused jobs).
    jobs = uploads.scicat_dev.state()["jobs"].values()
    assert [j for j in jobs if any(d.get("pid") == pid for d in j["jobParams"].get("datasetList", []))] == []


def test_caller_without_write_rights_is_refused_and_nothing_is_written(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"f.bin": 6 * MIB})
    # accessGroups grant reading only: SciCat lets the owner group alone change a dataset
    pid = register(uploads, "group-owner", files, readers=("group-reader",))
    stranger = Uploader(uploads, upload_api, "mallory", ["group-reader", "group-other"])

    answer = stranger.http.post("/uploads", json={"pid": pid, "files": [{"path": "f.bin", "size": 6 * MIB}]})

    assert answer.status_code == 403
    assert "group-owner" in answer.json()["detail"] and "mallory" in answer.json()["detail"]
    for path, body in (("/uploads/finalize", {"pid": pid}), ("/uploads/resume", {"pid": pid, "path": "f.bin"})):
        assert stranger.http.post(path, json=body).status_code == 403
    assert stranger.http.get("/uploads/status", params={"pid": pid}).status_code == 403
    assert landing_state(uploads, pid) == ([], [])
    assert uploads.scicat.get_dataset(pid).datasetlifecycle.archive_status_message == "datasetCreated"


def test_unknown_token_is_401_and_a_service_account_uploads_for_its_groups(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"r.bin": 100})
    pid = register(uploads, "robots", files)
    body = {"pid": pid, "files": [{"path": "r.bin", "size": 100}]}

    assert httpx.post(f"{upload_api}/uploads", json=body).status_code == 401
    assert (
        httpx.post(f"{upload_api}/uploads", json=body, headers={"Authorization": "Bearer not-a-token"}).status_code
        == 401
    )
    robot = UploadApi(upload_api, SERVICE_TOKEN)
    report = upload_dataset(robot, pid, files, finalize=True)
    assert report.parts_put == 1 and report.finalized["archivable"] is True


def test_over_budget_upload_is_refused_up_front(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"big.bin": 6 * MIB})
    pid = register(uploads, "group-b", files)
    user = Uploader(uploads, upload_api, "bob", ["group-b"])
    uploads.set_settings(UPLOAD_LANDINGZONE_BUDGET_GB=0.005)  # 5,000,000 bytes

    answer = user.http.post("/uploads", json={"pid": pid, "files": [{"path": "big.bin", "size": 6 * MIB}]})

    assert answer.status_code == 507
    detail = answer.json()["detail"]
    assert f"upload of {6 * MIB} bytes" in detail and "budget of 5000000 bytes" in detail
    assert landing_state(uploads, pid) == ([], [])


def test_the_budget_counts_what_uploads_under_way_will_still_bring(uploads, upload_api, tmp_path):
    first_files = make_files(tmp_path / "first", {"big.bin": 6 * MIB})
    second_files = make_files(tmp_path / "second", {"big.bin": 6 * MIB})
    first, second = register(uploads, "group-q", first_files), register(uploads, "group-q", second_files)
    user = Uploader(uploads, upload_api, "quinn", ["group-q"])
    # Room for one of the two files, not for both, beside what other tests left (their uploads' reservations too).
    budget = multipart.bucket_usage(uploads.s3, uploads.settings.s3.landingzone_bucket) + 10 * MIB
    uploads.set_settings(UPLOAD_LANDINGZONE_BUDGET_GB=budget / 1e9)
    start = lambda pid: user.http.post("/uploads", json={"pid": pid, "files": [{"path": "big.bin", "size": 6 * MIB}]})  # noqa: E731

    started = start(first)
    assert started.status_code == 200, started.text
    assert start(first).status_code == 200  # taking its own upload up again needs no more room

    refused = start(second)  # nothing of the first file is uploaded yet: its 6 MiB are promised all the same
    assert refused.status_code == 507, refused.text
    assert f"upload of {6 * MIB} bytes" in refused.json()["detail"]
    assert landing_state(uploads, second) == ([], [])

    [plan] = started.json()["files"]
    aborted = user.http.post("/uploads/abort", json={"pid": first, "path": "big.bin", "uploadId": plan["uploadId"]})
    assert aborted.status_code == 200, aborted.text
    assert start(second).status_code == 200  # the room the first file gave up


def test_aborting_with_another_files_upload_id_keeps_that_uploads_room(uploads, upload_api, tmp_path):
    pid = register(uploads, "group-s", make_files(tmp_path / "data", {"big.bin": 6 * MIB, "small.bin": 10}))
    user = Uploader(uploads, upload_api, "sam", ["group-s"])
    started = user.http.post("/uploads", json={"pid": pid, "files": [{"path": "big.bin", "size": 6 * MIB}]})
    [plan] = started.raise_for_status().json()["files"]

    answer = user.http.post("/uploads/abort", json={"pid": pid, "path": "small.bin", "uploadId": plan["uploadId"]})

    assert answer.status_code == 200 and answer.json() == {"aborted": False}, answer.text
    assert landing_state(uploads, pid) == ([], [landing_prefix(pid) + "big.bin"])  # S3 kept the upload ...
    reserved = multipart.reservations(uploads.s3, uploads.settings.s3.landingzone_bucket)
    assert reserved.get(plan["uploadId"]) == 6 * MIB  # ... so the room it will take stays promised


def room_for_one_more(uploads, size: int) -> None:
    """A budget with room for one more file of `size` bytes beside what the bucket holds and has promised (other
    tests' objects and reservations too), not for two."""
    budget = multipart.bucket_usage(uploads.s3, uploads.settings.s3.landingzone_bucket) + size + size // 2
    uploads.set_settings(UPLOAD_LANDINGZONE_BUDGET_GB=budget / 1e9)


def put_parts(plan: dict, data: bytes) -> list[dict]:
    """PUT a file's parts to the plan's URLs, as an uploader does; the parts to name at completion."""
    parts = []
    for url in plan["urls"]:
        offset = (url["partNumber"] - 1) * plan["partSize"]
        answer = httpx.put(url["url"], content=data[offset : offset + plan["partSize"]], timeout=60)
        assert answer.status_code == 200, answer.text
        parts.append({"partNumber": url["partNumber"], "etag": answer.headers["ETag"].strip('"')})
    return parts


def test_an_abort_naming_another_files_path_keeps_the_upload_and_its_reservation(uploads, upload_api, tmp_path):
    """On MinIO and AWS an abort with the wrong key answers NoSuchUpload and the upload lives on: its room in the
    budget must stay taken. (moto aborts by upload id alone, whatever the key: the API checks the key itself.)"""
    first_files = make_files(tmp_path / "first", {"big.bin": 6 * MIB, "small.txt": 100})
    first = register(uploads, "group-k", first_files)
    second = register(uploads, "group-k", make_files(tmp_path / "second", {"big.bin": 6 * MIB}))
    user = Uploader(uploads, upload_api, "kim", ["group-k"])
    bucket = uploads.settings.s3.landingzone_bucket
    room_for_one_more(uploads, 6 * MIB)
    started = user.http.post("/uploads", json={"pid": first, "files": [{"path": "big.bin", "size": 6 * MIB}]})
    assert started.status_code == 200, started.text
    upload_id = started.json()["files"][0]["uploadId"]

    wrong = user.http.post("/uploads/abort", json={"pid": first, "path": "small.txt", "uploadId": upload_id})

    assert wrong.status_code == 200 and wrong.json() == {"aborted": False}, wrong.text
    assert landing_state(uploads, first)[1] == [landing_prefix(first) + "big.bin"]  # still under way
    assert multipart.reservations(uploads.s3, bucket).get(upload_id) == 6 * MIB
    refused = user.http.post("/uploads", json={"pid": second, "files": [{"path": "big.bin", "size": 6 * MIB}]})
    assert refused.status_code == 507, refused.text
    assert landing_state(uploads, second) == ([], [])

    right = user.http.post("/uploads/abort", json={"pid": first, "path": "big.bin", "uploadId": upload_id})
    assert right.json() == {"aborted": True}
    assert upload_id not in multipart.reservations(uploads.s3, bucket)
    admitted = user.http.post("/uploads", json={"pid": second, "files": [{"path": "big.bin", "size": 6 * MIB}]})
    assert admitted.status_code == 200, admitted.text
    user.http.post(
        "/uploads/abort", json={"pid": second, "path": "big.bin", "uploadId": admitted.json()["files"][0]["uploadId"]}
    )


def test_a_complete_naming_another_files_path_assembles_nothing_and_keeps_the_reservation(
    uploads, upload_api, tmp_path
):
    files = make_files(tmp_path / "data", {"a.bin": 6 * MIB, "b.bin": 6 * MIB})
    pid = register(uploads, "group-c", files)
    user = Uploader(uploads, upload_api, "carl", ["group-c"])
    bucket = uploads.settings.s3.landingzone_bucket
    [plan] = user.api.start(pid, [{"path": "a.bin", "size": 6 * MIB}])["files"]
    parts = put_parts(plan, files["a.bin"].read_bytes())

    wrong = user.http.post(
        "/uploads/complete", json={"pid": pid, "path": "b.bin", "uploadId": plan["uploadId"], "parts": parts}
    )

    assert wrong.status_code == 404, wrong.text
    assert "b.bin" in wrong.json()["detail"]
    assert landing_state(uploads, pid) == ([], [landing_prefix(pid) + "a.bin"])
    assert multipart.reservations(uploads.s3, bucket).get(plan["uploadId"]) == 6 * MIB

    right = user.http.post(
        "/uploads/complete", json={"pid": pid, "path": "a.bin", "uploadId": plan["uploadId"], "parts": parts}
    )
    assert right.status_code == 200, right.text
    assert landing_state(uploads, pid) == ([landing_prefix(pid) + "a.bin"], [])
    assert plan["uploadId"] not in multipart.reservations(uploads.s3, bucket)


def signed_headers(url: str) -> list[str]:
    return parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"][0].split(";")


def test_each_part_url_is_signed_with_its_parts_exact_size(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"one.bin": 1, "big.bin": 11 * MIB, "empty.bin": 0})
    pid = register(uploads, "group-s", files)
    user = Uploader(uploads, upload_api, "sam", ["group-s"])

    plans = user.api.start(pid, [{"path": name, "size": p.stat().st_size} for name, p in files.items()])["files"]

    for plan in plans:
        assert plan["urls"], plan
        for url in plan["urls"]:
            assert "content-length" in signed_headers(url["url"]), url
    report = upload_dataset(user.api, pid, files)  # the client PUTs exactly those sizes
    assert sorted(report.files_completed) == sorted(files)


def test_part_urls_are_signed_with_the_md5_the_uploader_gives(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"big.bin": 11 * MIB})
    pid = register(uploads, "group-s", files)
    user = Uploader(uploads, upload_api, "sam", ["group-s"])
    data = files["big.bin"].read_bytes()
    [plan] = user.api.start(pid, [{"path": "big.bin", "size": len(data)}])["files"]
    md5 = hashlib.md5(data[: plan["partSize"]])

    answer = user.http.post(
        "/uploads/resume", json={"pid": pid, "path": "big.bin", "partsMd5": [{"partNumber": 1, "md5": md5.hexdigest()}]}
    )

    assert answer.status_code == 200, answer.text
    urls = {u["partNumber"]: u["url"] for u in answer.json()["urls"]}
    assert signed_headers(urls[1]) == ["content-length", "content-md5", "host"]
    assert signed_headers(urls[2]) == ["content-length", "host"]
    put = httpx.put(
        urls[1],
        content=data[: plan["partSize"]],
        timeout=60,
        headers={"Content-MD5": base64.b64encode(md5.digest()).decode()},
    )
    assert put.status_code == 200 and put.headers["ETag"].strip('"') == md5.hexdigest()
    user.api.abort(pid, "big.bin", plan["uploadId"])


def test_a_part_url_refuses_a_put_of_another_size(uploads, upload_api, tmp_path):
    """S3 checks the signed Content-Length: a 20 MiB PUT to the URL of a 1-byte file's part is refused (403).
    Needs an S3 server that verifies signatures (SeaweedFS, MinIO, AWS); moto does not."""
    files = make_files(tmp_path / "data", {"one.bin": 1})
    pid = register(uploads, "group-s", files)
    user = Uploader(uploads, upload_api, "sam", ["group-s"])
    [plan] = user.api.start(pid, [{"path": "one.bin", "size": 1}])["files"]
    [url] = plan["urls"]
    tampered = url["url"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    if httpx.put(tampered, content=b"x", timeout=60).status_code < 400:
        user.api.abort(pid, "one.bin", plan["uploadId"])
        pytest.skip("the test S3 server does not verify signatures (moto); SeaweedFS, MinIO and AWS do")

    oversize = httpx.put(url["url"], content=os.urandom(20 * MIB), timeout=120)

    assert oversize.status_code == 403, oversize.text[:300]
    bucket, key = uploads.settings.s3.landingzone_bucket, landing_prefix(pid) + "one.bin"
    assert multipart.uploaded_parts(uploads.s3, bucket, key, plan["uploadId"]) == {}
    # bound to the bytes too when the uploader gives their MD5: other bytes of the same size are refused
    md5 = hashlib.md5(files["one.bin"].read_bytes())
    [bound] = (
        user.http.post(
            "/uploads/resume",
            json={"pid": pid, "path": "one.bin", "partsMd5": [{"partNumber": 1, "md5": md5.hexdigest()}]},
        )
        .raise_for_status()
        .json()["urls"]
    )
    other = bytes([files["one.bin"].read_bytes()[0] ^ 1])
    swapped = httpx.put(
        bound["url"],
        content=other,
        timeout=60,
        headers={"Content-MD5": base64.b64encode(hashlib.md5(other).digest()).decode()},
    )
    assert swapped.status_code == 403, swapped.text[:300]
    assert httpx.put(url["url"], content=files["one.bin"].read_bytes(), timeout=60).status_code == 200
    user.api.abort(pid, "one.bin", plan["uploadId"])


def test_complete_compares_the_checksums_the_client_sends_with_what_s3_and_scicat_hold(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"a.bin": 6 * MIB})
    pid = register(uploads, "group-m", files)  # its origdatablock lists the sha256
    user = Uploader(uploads, upload_api, "mia", ["group-m"])
    data = files["a.bin"].read_bytes()
    [plan] = user.api.start(pid, [{"path": "a.bin", "size": 6 * MIB}])["files"]
    parts = put_parts(plan, data)
    local_md5 = [hashlib.md5(data[i : i + plan["partSize"]]).hexdigest() for i in range(0, len(data), plan["partSize"])]
    other_md5 = hashlib.md5(b"other bytes").hexdigest()

    def complete(**extra):
        return user.http.post(
            "/uploads/complete", json={"pid": pid, "path": "a.bin", "uploadId": plan["uploadId"], **extra}
        )

    wrong_part = complete(parts=[{**parts[0], "md5": other_md5}, {**parts[1], "md5": local_md5[1]}])
    assert wrong_part.status_code == 422, wrong_part.text
    detail = wrong_part.json()["detail"]
    assert "part 1 of 'a.bin'" in detail and other_md5 in detail and local_md5[0] in detail, detail
    wrong_file = complete(
        parts=[{**p, "md5": m} for p, m in zip(parts, local_md5, strict=True)], chk="0" * 64, chkAlg="sha256"
    )
    assert wrong_file.status_code == 422, wrong_file.text
    detail = wrong_file.json()["detail"]
    assert "0" * 64 in detail and hashlib.sha256(data).hexdigest() in detail and "origdatablock" in detail, detail
    assert landing_state(uploads, pid) == ([], [landing_prefix(pid) + "a.bin"])  # nothing assembled

    done = complete(
        parts=[{**p, "md5": m} for p, m in zip(parts, local_md5, strict=True)],
        chk=hashlib.sha256(data).hexdigest(),
        chkAlg="SHA256",
    )
    assert done.status_code == 200, done.text
    assert landing_state(uploads, pid) == ([landing_prefix(pid) + "a.bin"], [])


def test_archival_releases_the_reservations_of_the_uploads_its_cleanup_aborts(uploads, upload_api, tmp_path):
    files = make_files(tmp_path / "data", {"f.bin": 3000})
    pid = register(uploads, "group-l", files)
    user = Uploader(uploads, upload_api, "lena", ["group-l"])
    report = upload_dataset(user.api, pid, files, archive=True)
    bucket = uploads.settings.s3.landingzone_bucket
    # the owner starts the file again while the archive job waits (straight on S3: the API sees it uploaded)
    again = uploads.s3.create_multipart_upload(Bucket=bucket, Key=landing_prefix(pid) + "f.bin")["UploadId"]
    multipart.reserve(uploads.s3, bucket, again, 3000)

    archive_datasets_flow(job_id=report.finalized["jobId"])

    assert uploads.job(report.finalized["jobId"])["jobStatusMessage"] == "finishedSuccessful"
    assert landing_state(uploads, pid) == ([], [])  # the landing prefix emptied, the upload aborted
    assert again not in multipart.reservations(uploads.s3, bucket)  # and its room given back in the same step


def test_uploads_started_at_the_same_instant_never_pass_the_budget_together(
    uploads, tmp_path, prefect_api_url, deployments
):
    count = 6
    pids = [register(uploads, "group-r", make_files(tmp_path / str(i), {"big.bin": 6 * MIB})) for i in range(count)]
    bucket = uploads.settings.s3.landingzone_bucket
    budget = multipart.bucket_usage(uploads.s3, bucket) + 10 * MIB  # room for one of the files
    uploads.set_settings(UPLOAD_LANDINGZONE_BUDGET_GB=budget / 1e9)
    body = lambda pid: {"pid": pid, "files": [{"path": "big.bin", "size": 6 * MIB}]}  # noqa: E731
    # An API that keeps its settings, as deployed: requests are not spaced out by reading them from Prefect.
    with running_upload_api(tmp_path / "api", prefect_api_url, deployments, 600) as api_url:
        user = Uploader(uploads, api_url, "rita", ["group-r"])
        user.http.get("/uploads/status", params={"pid": pids[0]}).raise_for_status()  # settings loaded
        at_once = threading.Barrier(count)

        def start(pid: str) -> httpx.Response:
            at_once.wait()
            return user.http.post("/uploads", json=body(pid))

        with ThreadPoolExecutor(count) as pool:
            answers = dict(zip(pids, pool.map(start, pids), strict=True))

        assert {a.status_code for a in answers.values()} <= {200, 507}, [a.text for a in answers.values()]
        admitted = [pid for pid, a in answers.items() if a.status_code == 200]
        assert len(admitted) <= 1, f"{len(admitted)} of {count} uploads of 6 MiB admitted with room for one"
        assert multipart.bucket_usage(uploads.s3, bucket) <= budget
        for pid in set(pids) - set(admitted):
            assert landing_state(uploads, pid) == ([], [])  # a refused start leaves no upload behind
        for pid in admitted:
            [plan] = answers[pid].json()["files"]
            aborted = user.http.post(
                "/uploads/abort", json={"pid": pid, "path": "big.bin", "uploadId": plan["uploadId"]}
            )
            assert aborted.status_code == 200, aborted.text
        last = next(pid for pid in pids if pid not in admitted)
        retried = user.http.post("/uploads", json=body(last))
        assert retried.status_code == 200, retried.text  # the refused starts gave their room back
        [plan] = retried.json()["files"]
        user.http.post("/uploads/abort", json={"pid": last, "path": "big.bin", "uploadId": plan["uploadId"]})


@pytest.mark.parametrize(
    "path", ["../escape.bin", "/etc/passwd", "a//b.bin", "a\\b.bin", "./f.bin", "sub/../../x", "f.bin\x00", ""]
)
def test_path_outside_the_landing_prefix_is_refused(uploads, upload_api, tmp_path, path):
    files = make_files(tmp_path / "data", {"f.bin": 100})
    pid = register(uploads, "group-p", files)
    user = Uploader(uploads, upload_api, "paula", ["group-p"])

    answer = user.http.post("/uploads", json={"pid": pid, "files": [{"path": path, "size": 100}]})

    assert answer.status_code == 422, answer.text
    assert "file path" in answer.json()["detail"]
    bucket = uploads.settings.s3.landingzone_bucket
    assert uploads.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert uploads.landing_keys(pid) == []


def test_bad_pid_is_refused_by_the_flows_rules(uploads, upload_api):
    user = Uploader(uploads, upload_api, "pete", ["group-x"])
    for pid in ("../other", "a/raw_files/b", "/abs"):
        answer = user.http.post("/uploads", json={"pid": pid, "files": [{"path": "f", "size": 1}]})
        assert answer.status_code == 422 and "pid" in answer.json()["detail"], answer.text


def test_openapi_lists_the_upload_endpoints(upload_api):
    paths = httpx.get(f"{upload_api}/openapi.json").json()["paths"]
    for endpoint in ("", "/status", "/resume", "/complete", "/abort", "/finalize"):
        assert f"{ROOT}/uploads{endpoint}" in paths


def test_landing_zone_gets_the_abort_rule_and_cleanup_aborts_old_uploads(uploads, tmp_path):
    import subprocess
    import sys

    bucket = uploads.settings.s3.landingzone_bucket
    rules = uploads.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["AbortIncompleteMultipartUpload"] for r in rules] == [{"DaysAfterInitiation": 7}]
    key = landing_prefix("20.500.1/abandoned") + "f.bin"
    upload_id = uploads.s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    multipart.reserve(uploads.s3, bucket, upload_id, 123)
    multipart.reserve(uploads.s3, bucket, "an upload S3 already aborted", 456)
    command = [
        sys.executable,
        "-m",
        "archiver.cli",
        "upload-cleanup",
        "--vars",
        str(uploads.vars_file),
        "--secrets-dir",
        str(uploads.secrets_dir),
    ]

    kept = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    reserved = multipart.reservations(uploads.s3, bucket)
    assert reserved[upload_id] == 123 and "an upload S3 already aborted" not in reserved
    aborted = subprocess.run(
        [*command, "--older-than-days", "0"], capture_output=True, text=True, timeout=120, check=True
    )

    assert "0 unfinished upload(s) older than 7 day(s) aborted" in kept.stdout  # UPLOAD_ABORT_INCOMPLETE_DAYS
    assert "1 unfinished upload(s) older than 0 day(s) aborted" in aborted.stdout
    assert f"aborted s3://{bucket}/{key}" in aborted.stdout
    assert uploads.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "budget reservation(s) of uploads no longer under way released" in kept.stdout
    assert multipart.reservations(uploads.s3, bucket) == {}  # every upload was aborted: none is reserved


def test_property_based_run_against_the_upload_endpoints_gives_no_server_error(uploads, upload_api, tmp_path):
    """schemathesis against the upload endpoints, with a real user's token or none, one dataset registered."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error

    register(uploads, "group-z", make_files(tmp_path / "data", {"z.bin": 10}))
    user = Uploader(uploads, upload_api, "zed", ["group-z"])
    schema = schemathesis.openapi.from_url(f"{upload_api}/openapi.json").include(tag="uploads")
    cases = st.one_of(
        schema.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
    )
    statuses: dict[int, int] = {}

    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases, authenticated=st.booleans())
    def run(case, authenticated):
        headers = {"Authorization": f"Bearer {user.token}"} if authenticated else {}
        response = case.call_and_validate(
            base_url=upload_api.removesuffix(ROOT), headers=headers, checks=[not_a_server_error], timeout=90
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    run()
    print(f"schemathesis (uploads): statuses {statuses}")
    assert 401 in statuses and any(status in (404, 422) for status in statuses)
