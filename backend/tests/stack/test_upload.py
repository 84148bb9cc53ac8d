"""`archiver upload` from this machine through the proxy, without S3 credentials, then archival and retrieval.

The uploader is a SciCat user of the development server in the dataset's owner group; it holds its SciCat
token only. The API (behind the proxy, under /api/v1) hands out part URLs signed for MINIO_EXTERNAL_ENDPOINT,
which this machine reaches at the published S3 port."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from archiver.scicat.models import DataFile, NewOrigDatablock, new_raw_dataset

pytestmark = [pytest.mark.stack, pytest.mark.timeout(900)]

MIB = 2**20


def _user_token(stack, groups: list[str]) -> str:
    name, password = f"uploader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    httpx.post(
        f"{stack.scicat_url}/dev/users", json={"username": name, "password": password, "groups": groups}, timeout=30
    ).raise_for_status()
    answer = httpx.post(
        f"{stack.scicat_url}/api/v3/auth/login", json={"username": name, "password": password}, timeout=30
    )
    return answer.raise_for_status().json()["access_token"]


def test_archiver_upload_through_the_proxy_then_archive_and_retrieve(stack, operator, tmp_path):
    stack.set_variable("upload_part_size_mb", 5)  # several parts per file
    contents = {"raw/a.bin": os.urandom(11 * MIB), "raw/b.bin": os.urandom(6 * MIB + 17)}
    root = tmp_path / "dataset"
    for path, data in contents.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    total = sum(len(d) for d in contents.values())
    pid = operator.scicat.create_dataset(
        new_raw_dataset("uploaders", "uploaded dataset", size=total, number_of_files=len(contents))
    ).pid
    operator.scicat.create_origdatablock(
        pid,
        NewOrigDatablock(
            size=total,
            chk_alg="sha256",
            data_file_list=[
                DataFile(path=p, size=len(d), time=datetime.now(UTC), chk=hashlib.sha256(d).hexdigest())
                for p, d in contents.items()
            ],
        ),
    )
    operator.originals[pid] = contents
    token_file = tmp_path / "token"
    token_file.write_text(_user_token(stack, ["uploaders"]))
    since = stack.scicat_requests()[-1]["seq"]

    upload = subprocess.run(
        [
            sys.executable,
            "-m",
            "archiver.cli",
            "upload",
            pid,
            str(root / "raw"),
            "--root",
            str(root),
            "--api-url",
            f"{stack.base_url}/api/v1",
            "--token-file",
            str(token_file),
            "--archive",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )

    assert upload.returncode == 0, upload.stderr
    assert "archive job" in upload.stdout
    forward = next(e for e in stack.scicat_requests(since) if e["method"] == "POST" and e["path"].endswith("/jobs"))
    assert forward["forward"]["status"] == 200, forward
    run = operator.wait(json.loads(forward["forward"]["answer"]))
    assert run["state_type"] == "COMPLETED", stack.flow_run_failure(run)
    operator.assert_archived(pid, forward["jobId"])

    job, started = operator.create_job("retrieve", [pid])
    assert operator.wait(started)["state_type"] == "COMPLETED"
    operator.assert_retrieved(pid, job["id"])
    stack.set_variable("upload_part_size_mb", 64)
