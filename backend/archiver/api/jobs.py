"""The job document SciCat POSTs: read with a size limit, parsed and checked before anything is started.

Every problem is an `HTTPException` (413, 400 or 422) whose message names the offending value,
shortened: a hostile body is never echoed back or logged whole."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal, get_args
from uuid import UUID

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, ValidationError

from archiver.packing.errors import InvalidNameError, InvalidPidError
from archiver.packing.naming import check_pid, check_relative_path

JobType = Literal["archive", "retrieve"]
JOB_TYPES: tuple[str, ...] = get_args(JobType)
MAX_PID_LENGTH = 512  # characters; SciCat PIDs are a prefix and a UUID, far shorter
SHOWN_CHARS = 80  # of an offending value in a message


def shorten(value: Any) -> str:
    """`repr` of a value, cut to SHOWN_CHARS; escapes control characters and lone surrogates."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


class JobDocument(BaseModel):
    """The job SciCat sends; only id and type are needed. The dataset list is read from either shape
    (v4: `jobParams.datasetList`, v3: `datasetList`); without one the flow asks SciCat."""

    model_config = ConfigDict(extra="ignore")

    id: UUID
    type: JobType
    jobParams: dict[str, Any] | None = None
    datasetList: list[Any] | None = None

    def dataset_list(self) -> tuple[str, list[Any] | None]:
        """Where the dataset list was found and the list (None when the job names no datasets)."""
        nested = (self.jobParams or {}).get("datasetList")
        if nested:
            return "jobParams.datasetList", nested
        return "datasetList", self.datasetList or None


async def read_body(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    too_big = HTTPException(
        413, f"the body is larger than {limit} bytes (API_MAX_BODY_BYTES); a SciCat job document is far smaller"
    )
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def parse_job(body: bytes) -> JobDocument:
    """The job from a request body, whatever its Content-Type: SciCat's url job action sends the JSON
    as text/plain unless configured otherwise. 400 for an unknown type, 422 for anything else wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPException(422, f"the body is not JSON ({e}); send the SciCat job document as a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPException(
            422, f"the body is JSON but not an object (got {type(data).__name__}); send the job document"
        )
    if isinstance(data.get("type"), str) and data["type"] not in JOB_TYPES:
        raise HTTPException(400, f"unknown job type {shorten(data['type'])}; allowed types: {', '.join(JOB_TYPES)}")
    try:
        return JobDocument.model_validate(data)
    except ValidationError as e:
        problems = [
            f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']} (got {shorten(error['input'])})"
            for error in e.errors(include_url=False)
        ]
        raise HTTPException(422, "not a SciCat job document: " + "; ".join(problems)) from None


def check_pid_at_the_door(pid: Any, where: str) -> str:
    """The flows' PID rules (`packing.naming.check_pid`) plus a type, length and printability check."""
    if not isinstance(pid, str):
        raise HTTPException(422, f"{where}: the dataset PID must be a string, got {shorten(pid)}")
    if len(pid) > MAX_PID_LENGTH:
        raise HTTPException(422, f"{where}: dataset PID {shorten(pid)} is longer than {MAX_PID_LENGTH} characters")
    if not pid.isprintable():
        raise HTTPException(
            422,
            f"{where}: dataset PID {shorten(pid)} contains a non-printable character "
            "(control character, lone surrogate or invisible separator); SciCat PIDs never do",
        )
    try:
        return check_pid(pid)
    except InvalidPidError as e:
        raise HTTPException(422, f"{where}: {e}") from None


def dataset_ids(job: JobDocument, max_datasets: int) -> list[str] | None:
    """The PIDs the job names (None: none named, the flow asks SciCat), each checked; 422 naming the first bad one."""
    where, datasets = job.dataset_list()
    if datasets is None:
        return None
    if not isinstance(datasets, list):
        raise HTTPException(422, f"{where} must be a list of {{'pid': ...}} objects, got {shorten(datasets)}")
    if len(datasets) > max_datasets:
        raise HTTPException(
            422,
            f"{where} names {len(datasets)} datasets, more than {max_datasets} (API_MAX_DATASETS_PER_JOB); "
            "split the job",
        )
    pids = []
    for index, entry in enumerate(datasets):
        if not isinstance(entry, dict) or "pid" not in entry:
            raise HTTPException(422, f"{where}[{index}] must be an object with a 'pid', got {shorten(entry)}")
        pids.append(check_pid_at_the_door(entry["pid"], f"{where}[{index}].pid"))
    return pids


MAX_FILE_PATH_LENGTH = 4096  # characters, PATH_MAX on Linux


def dataset_files(job: JobDocument) -> dict[str, list[str]] | None:
    """The files each dataset entry lists (`datasetList[].files`, what to retrieve alone), None when none
    does; each path a printable relative path staying inside the dataset (422 naming the first bad one).
    Call after `dataset_ids`, which checked the entries' shape and PIDs."""
    where, datasets = job.dataset_list()
    selected: dict[str, list[str]] = {}
    for index, entry in enumerate(datasets or []):
        files = entry.get("files") or []
        if not isinstance(files, list):
            raise HTTPException(422, f"{where}[{index}].files must be a list of file paths, got {shorten(files)}")
        for number, path in enumerate(files):
            at = f"{where}[{index}].files[{number}]"
            if not isinstance(path, str) or not path.isprintable() or len(path) > MAX_FILE_PATH_LENGTH:
                raise HTTPException(
                    422,
                    f"{at}: a file path must be a printable string of at most "
                    f"{MAX_FILE_PATH_LENGTH} characters, got {shorten(path)}",
                )
            try:
                check_relative_path(path.removeprefix("./"), "file path")
            except InvalidNameError as e:
                raise HTTPException(422, f"{at}: {e}") from None
        if files:
            selected.setdefault(entry["pid"], []).extend(files)
    return selected or None
