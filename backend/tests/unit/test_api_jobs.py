"""The API's job checks as functions: size limit, parsing, dataset list and PID rules."""

import asyncio
import json
import uuid

import pytest
from fastapi import HTTPException

from archiver.api.jobs import MAX_PID_LENGTH, dataset_ids, parse_job, read_body, shorten


async def _chunks(parts):
    for part in parts:
        yield part


def _read(parts, declared=None, limit=10):
    return asyncio.run(read_body(_chunks(parts), declared, limit))


def test_body_within_the_limit_is_read_whole():
    assert _read([b"12345", b"67890"]) == b"1234567890"


@pytest.mark.parametrize(("parts", "declared"), [([b"12345", b"678901"], None), ([], "11")])
def test_body_over_the_limit_is_413_naming_the_setting(parts, declared):
    with pytest.raises(HTTPException) as raised:
        _read(parts, declared)
    assert raised.value.status_code == 413 and "API_MAX_BODY_BYTES" in raised.value.detail


def test_streamed_body_stops_at_the_first_chunk_past_the_limit():
    taken = []

    async def endless():
        while True:
            taken.append(1)
            yield b"x" * 4

    with pytest.raises(HTTPException):
        asyncio.run(read_body(endless(), None, 10))
    assert len(taken) == 3


def test_shorten_cuts_long_values_and_escapes_surrogates():
    assert shorten("\ud800") == r"'\ud800'"
    long = shorten("x" * 1000)
    assert len(long) < 120 and "1002 characters" in long


def _job(datasets, key="v4"):
    document = {"id": str(uuid.uuid4()), "type": "archive"}
    if key == "v4":
        document["jobParams"] = {"datasetList": datasets}
    else:
        document["datasetList"] = datasets
    return parse_job(json.dumps(document).encode())


@pytest.mark.parametrize("key", ["v4", "v3"])
def test_dataset_pids_of_either_shape(key):
    assert dataset_ids(_job([{"pid": "20.500.11935/a"}, {"pid": "b"}], key), 10) == ["20.500.11935/a", "b"]


def test_no_dataset_list_leaves_the_lookup_to_the_flow():
    assert dataset_ids(_job([]), 10) is None


@pytest.mark.parametrize(
    ("pid", "says"),
    [
        ("a\x00b", r"'a\x00b'"),
        ("\ud800", "non-printable"),
        ("a\u200bb", "non-printable"),
        ("..", "'..'"),
        ("x" * (MAX_PID_LENGTH + 1), f"longer than {MAX_PID_LENGTH}"),
        (None, "must be a string"),
    ],
)
def test_bad_pid_is_422_naming_entry_and_value(pid, says):
    with pytest.raises(HTTPException) as raised:
        dataset_ids(_job([{"pid": "ok"}, {"pid": pid}]), 10)
    assert raised.value.status_code == 422
    assert says in raised.value.detail and "jobParams.datasetList[1].pid" in raised.value.detail
    assert len(raised.value.detail) < 1000


def test_too_many_datasets_is_422_naming_the_setting():
    with pytest.raises(HTTPException) as raised:
        dataset_ids(_job([{"pid": f"p{i}"} for i in range(11)]), 10)
    assert "11 datasets" in raised.value.detail and "API_MAX_DATASETS_PER_JOB" in raised.value.detail


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"id": "6f1c2a3e-0d4b-4c8e-9a51-2b7d9e0f4c11", "type": "delete"}', 400, "'delete'"),
        (b'{"id": "nope", "type": "archive"}', 422, "'nope'"),
        (b"[1]", 422, "not an object"),
        (b"{", 422, "not JSON"),
    ],
)
def test_malformed_job_is_refused_naming_the_problem(body, status, says):
    with pytest.raises(HTTPException) as raised:
        parse_job(body)
    assert raised.value.status_code == status and says in raised.value.detail


def test_files_of_a_retrieve_job_per_dataset():
    from archiver.api.jobs import dataset_files

    job = _job([{"pid": "20.500/a", "files": ["x/1.bin", "./2.bin"]}, {"pid": "20.500/b", "files": []}])
    assert dataset_files(job) == {"20.500/a": ["x/1.bin", "./2.bin"]}
    assert dataset_files(_job([{"pid": "20.500/a", "files": []}])) is None


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (["../etc/passwd"], "files[0]: file path '../etc/passwd'"),
        (["ok.bin", "/abs"], "files[1]: file path '/abs' is an absolute path"),
        ([3], "files[0]: a file path must be a printable string"),
        ("x.bin", "files must be a list of file paths"),
    ],
)
def test_bad_file_path_is_422_naming_entry_and_value(files, says):
    from archiver.api.jobs import dataset_files

    with pytest.raises(HTTPException) as raised:
        dataset_files(_job([{"pid": "20.500/a", "files": files}]))
    assert raised.value.status_code == 422 and says in raised.value.detail
