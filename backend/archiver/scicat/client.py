"""httpx client for the SciCat calls of the archive and retrieve protocol.

One `ScicatClient` can be shared by the tasks of a flow run: httpx's client is
thread-safe and the bearer token is guarded by a lock. It logs in on first use,
reuses the token, and logs in again once when SciCat answers 401.

Retries: connection errors and 502/503/504 are retried with exponential
backoff; 4xx answers never are. A POST that creates something is retried only
when the request cannot have reached SciCat (connect errors): a gateway's
502/504 or a dropped connection may follow a request SciCat carried out, so a
lost answer never registers a datablock twice here. The caller decides (the
flows look for the record before trying again).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from archiver.config.secrets import DEFAULT_SECRETS_DIR, read_secret, secret_spec
from archiver.config.settings import ScicatSection
from archiver.errors import ArchiverError
from archiver.scicat.models import (
    LISTED_DATABLOCK_FIELDS,
    Datablock,
    Dataset,
    DatasetLifecycle,
    Job,
    JobResultObject,
    JobStatus,
    ListedDatablock,
    NewDatablock,
    NewOrigDatablock,
    OrigDatablock,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
DATABLOCK_PAGE_SIZE = 1000
BODY_EXCERPT_CHARS = 300


@dataclass(frozen=True)
class ScicatCredentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_secret_files(cls, secrets_dir: Path = DEFAULT_SECRETS_DIR, environ=None) -> ScicatCredentials:
        """From `SCICAT_USER_FILE` / `SCICAT_PASSWORD_FILE`, else scicatuser.txt / scicatpass.txt in `secrets_dir`."""
        return cls(
            read_secret(secret_spec("SCICAT_USER_FILE"), secrets_dir, environ),
            read_secret(secret_spec("SCICAT_PASSWORD_FILE"), secrets_dir, environ),
        )


class ScicatError(ArchiverError):
    """A SciCat call failed; the message names the call, its target and SciCat's answer."""

    def __init__(self, call: str, target: str, detail: str, status_code: int | None = None, body: str = ""):
        self.call = call
        self.target = target
        self.status_code = status_code
        self.body = body
        super().__init__(f"SciCat call '{call}' for {target} failed: {detail}")


class InvalidIdError(ArchiverError, ValueError):
    """An id that cannot be one URL path segment."""


def encode_id(value: str) -> str:
    """A PID or id as one path segment: everything reserved is escaped, `/` becomes %2F.

    '', '.' and '..' are refused: HTTP clients and servers read them as path navigation
    (httpx removes dot segments), so the call would reach another resource."""
    if value in ("", ".", ".."):
        raise InvalidIdError(f"id {value!r} cannot be sent to SciCat as a path segment; check the job's dataset list")
    return quote(value, safe="")


def _prefix_url(endpoint: str, prefix: str) -> str:
    return endpoint.rstrip("/") + "/" + prefix.strip("/") + "/"


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= BODY_EXCERPT_CHARS else text[:BODY_EXCERPT_CHARS] + "..."


class ScicatClient:
    def __init__(
        self,
        settings: ScicatSection,
        credentials: ScicatCredentials,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self._credentials = credentials
        self._api = _prefix_url(settings.endpoint, settings.api_prefix)
        self._jobs_api = _prefix_url(settings.endpoint, settings.jobs_api_prefix)
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(timeout=timeout, headers={"Accept": "application/json"})
        self._token: str | None = None
        self._token_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ScicatClient(endpoint={self.settings.endpoint!r}, user={self._credentials.username!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ScicatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- authentication -------------------------------------------------

    def login(self) -> str:
        """Log in and keep the token for the following calls."""
        response = self._send(
            "login",
            f"user {self._credentials.username!r}",
            "POST",
            self._api + "auth/login",
            json={"username": self._credentials.username, "password": self._credentials.password},
            repeatable=True,
        )
        self._check("login", f"user {self._credentials.username!r}", response)
        try:
            token = response.json().get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise ScicatError(
                "login",
                f"user {self._credentials.username!r}",
                "answer has no access_token",
                response.status_code,
                _excerpt(response),
            )
        self._token = token
        return token

    def _current_token(self, stale: str | None = None) -> str:
        with self._token_lock:
            token = self._token
            if token is None or token == stale:
                token = self.login()
            return token

    # --- jobs -------------------------------------------------------------

    def create_job(
        self,
        job_type: str,
        pids: list[str],
        contact_email: str = "archiver@example.org",
        files: dict[str, list[str]] | None = None,
    ) -> Job:
        """Create a job as a SciCat user would (tests and tools; SciCat's users create the real ones).
        `files`: per PID the files to retrieve (SciCat's frontend lets users pick single files)."""
        entries = [{"pid": pid, "files": list((files or {}).get(pid, []))} for pid in pids]
        body: dict[str, Any]
        if self.settings.job_status_schema == "v3":
            body = {"type": job_type, "emailJobInitiator": contact_email, "datasetList": entries}
        else:
            body = {"type": job_type, "contactEmail": contact_email, "jobParams": {"datasetList": entries}}
        return Job.model_validate(
            self._call("create job", f"job type {job_type!r}", "POST", self._jobs_api + "jobs", body)
        )

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._call("get job", f"job {job_id}", "GET", self._job_url(job_id)))

    def get_job_dataset_pids(self, job_id: str) -> list[str]:
        """The PIDs of the job's datasets (`datasetList` on /api/v3, `jobParams.datasetList` on /api/v4)."""
        return self.get_job(job_id).dataset_pids

    def update_job_status(
        self,
        job_id: str,
        status: JobStatus,
        message: str | None = None,
        result: JobResultObject | None = None,
    ) -> Job:
        """Job status in the shape the setting `SCICAT_JOB_STATUS_SCHEMA` names (v3 or v4)."""
        body = job_status_body(self.settings.job_status_schema, status, message, result)
        return Job.model_validate(
            self._call(f"update job status to {status.value}", f"job {job_id}", "PATCH", self._job_url(job_id), body)
        )

    # --- datasets ---------------------------------------------------------

    def create_dataset(self, dataset: Dataset) -> Dataset:
        target = f"dataset {dataset.pid}" if dataset.pid else "a new dataset"
        return Dataset.model_validate(
            self._call("create dataset", target, "POST", self._api + "datasets", dataset.to_wire())
        )

    def get_dataset(self, pid: str) -> Dataset:
        return Dataset.model_validate(self._call("get dataset", f"dataset {pid}", "GET", self._dataset_url(pid)))

    def update_lifecycle(self, pid: str, call: str, **changes: Any) -> None:
        """Change lifecycle fields of a dataset, keeping all others.

        SciCat's `PATCH datasets/{pid}` replaces the whole lifecycle (fields not sent fall back to their
        defaults), so the current lifecycle is read and sent back complete with the changes. With
        `SCICAT_LIFECYCLE_MERGE_ENDPOINT` (SciCat >= 4.19) only the changes go to the merging
        `PATCH datasets/{pid}/datasetlifecycle`.

        SciCat 4.19-4.23 answer that endpoint's update with 409 when it changes nothing (a retried update):
        the lifecycle is read again and the update is done if it holds the values asked for."""
        if not self.settings.lifecycle_merge_endpoint:
            current = self.get_dataset(pid).datasetlifecycle or DatasetLifecycle()
            body = {"datasetlifecycle": current.with_changes(**changes).to_wire()}
            self._call(call, f"dataset {pid}", "PATCH", self._dataset_url(pid), body)
            return
        wanted = DatasetLifecycle(**changes).to_wire()
        try:
            self._call(call, f"dataset {pid}", "PATCH", self._dataset_url(pid) + "/datasetlifecycle", wanted)
        except ScicatError as e:
            if e.status_code != 409:
                raise
            stored = (self.get_dataset(pid).datasetlifecycle or DatasetLifecycle()).to_wire()
            differing = {name: stored.get(name) for name, value in wanted.items() if stored.get(name) != value}
            if differing:
                shown = ", ".join(
                    f"{name} {stored_value!r} (wanted {wanted[name]!r})" for name, stored_value in differing.items()
                )
                raise ScicatError(
                    call,
                    f"dataset {pid}",
                    f"SciCat answered 409 ({e.body}) but the lifecycle holds "
                    f"{shown}; check the dataset's lifecycle in SciCat",
                    409,
                    e.body,
                ) from None
            log.info("SciCat call '%s' for dataset %s: lifecycle already as asked (SciCat answered 409)", call, pid)

    # --- datablocks ---------------------------------------------------------

    def create_origdatablock(self, pid: str, origdatablock: NewOrigDatablock) -> OrigDatablock:
        body = origdatablock.to_wire()  # the dataset is named by the path only: SciCat refuses datasetId here
        return OrigDatablock.model_validate(
            self._call(
                "create origdatablock", f"dataset {pid}", "POST", self._dataset_url(pid) + "/origdatablocks", body
            )
        )

    def get_origdatablocks(self, pid: str) -> list[OrigDatablock]:
        answer = self._call("get origdatablocks", f"dataset {pid}", "GET", self._dataset_url(pid) + "/origdatablocks")
        return [OrigDatablock.model_validate(item) for item in answer]

    def create_datablock(self, pid: str, datablock: NewDatablock) -> Datablock:
        body = datablock.to_wire()  # the dataset is named by the path only: SciCat refuses datasetId here
        target = f"dataset {pid}, datablock {datablock.archive_id}"
        return Datablock.model_validate(
            self._call("create datablock", target, "POST", self._dataset_url(pid) + "/datablocks", body)
        )

    def get_datablocks(self, pid: str) -> list[Datablock]:
        answer = self._call("get datablocks", f"dataset {pid}", "GET", self._dataset_url(pid) + "/datablocks")
        return [Datablock.model_validate(item) for item in answer]

    def iter_datablocks(self, page_size: int = DATABLOCK_PAGE_SIZE) -> Iterator[ListedDatablock]:
        """Every datablock SciCat holds, with only `LISTED_DATABLOCK_FIELDS`, in pages of `page_size` ordered by
        `_id` (`GET {api}/datablocks?filter=`): one page in memory at a time.

        Paging is by skip, so a datablock registered meanwhile can shift a page: what was seen already is
        dropped; one deleted meanwhile can be missed until the next listing. A SciCat that does not honour
        `limits` (more than a page, or not in `_id` order) is refused, or the listing would never end."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"datablock page size {page_size!r} must be a whole number of at least 1")
        skip, last_id = 0, None
        while True:
            target = f"datablocks {skip} to {skip + page_size - 1}"
            listing = {
                "fields": list(LISTED_DATABLOCK_FIELDS),
                "limits": {"limit": page_size, "skip": skip, "order": "_id:asc"},
            }
            page = self._call(
                "list datablocks",
                target,
                "GET",
                self._api + "datablocks",
                params={"filter": json.dumps(listing, separators=(",", ":"))},
            )
            blocks = self._listed_page(target, page, page_size)
            fresh = [block for block in blocks if last_id is None or block.id > last_id]
            if len(blocks) == page_size and not fresh:
                raise ScicatError(
                    "list datablocks",
                    target,
                    "SciCat answered the same datablocks again: it does not honour limits.skip; upgrade SciCat",
                )
            yield from fresh
            if len(blocks) < page_size:
                return
            last_id, skip = blocks[-1].id, skip + len(blocks)

    @staticmethod
    def _listed_page(target: str, page: Any, page_size: int) -> list[ListedDatablock]:
        if not isinstance(page, list):
            raise ScicatError("list datablocks", target, f"answer is not a list: {str(page)[:BODY_EXCERPT_CHARS]}")
        if len(page) > page_size:
            raise ScicatError(
                "list datablocks",
                target,
                f"{len(page)} datablocks for a page of {page_size}: SciCat "
                "does not honour limits.limit; upgrade SciCat",
            )
        try:
            blocks = [ListedDatablock.model_validate(item) for item in page]
        except ValidationError as e:
            raise ScicatError(
                "list datablocks", target, f"a datablock lacks _id, datasetId or archiveId: {e}"
            ) from None
        if any(a.id >= b.id for a, b in itertools.pairwise(blocks)):
            raise ScicatError(
                "list datablocks",
                target,
                "datablocks not in _id order: SciCat does not honour limits.order; upgrade SciCat",
            )
        return blocks

    def delete_datablock(self, pid: str, datablock_id: str) -> None:
        url = self._dataset_url(pid) + "/datablocks/" + encode_id(datablock_id)
        self._call("delete datablock", f"dataset {pid}, datablock {datablock_id}", "DELETE", url)

    # --- plumbing -------------------------------------------------------------

    def _dataset_url(self, pid: str) -> str:
        return self._api + "datasets/" + encode_id(pid)

    def _job_url(self, job_id: str) -> str:
        return self._jobs_api + "jobs/" + encode_id(job_id)

    def _call(
        self,
        call: str,
        target: str,
        method: str,
        url: str,
        body: dict | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One authenticated call; logs in again once if the token was refused."""
        token = self._current_token()
        response = self._send(call, target, method, url, json=body, token=token, params=params)
        if response.status_code == 401:
            token = self._current_token(stale=token)
            response = self._send(call, target, method, url, json=body, token=token, params=params)
        self._check(call, target, response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ScicatError(call, target, "answer is not JSON", response.status_code, _excerpt(response)) from None

    def _send(
        self,
        call: str,
        target: str,
        method: str,
        url: str,
        json: dict | None = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
        repeatable: bool | None = None,
    ) -> httpx.Response:
        """The answer, retrying what cannot have taken effect twice: everything but a POST (unless
        `repeatable`) on 502/503/504 and lost connections, and any request that never connected."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        repeatable = method != "POST" if repeatable is None else repeatable
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, json=json, headers=headers, params=params)
                if response.status_code not in RETRY_STATUSES or not repeatable:
                    return response
                problem = f"HTTP {response.status_code}: {_excerpt(response)}"
                if attempt >= self._retries:
                    raise ScicatError(
                        call, target, f"{problem} (after {attempt + 1} tries)", response.status_code, _excerpt(response)
                    )
            except httpx.TransportError as e:
                problem = f"{e.__class__.__name__}: {e}"
                may_have_arrived = not isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt >= self._retries or (not repeatable and may_have_arrived):
                    raise ScicatError(
                        call, target, f"no answer from {url}: {problem} (after {attempt + 1} tries)"
                    ) from e
            delay = min(self._max_backoff_s, self._backoff_s * 2**attempt)
            log.warning("SciCat call '%s' for %s: %s; retrying in %.1fs", call, target, problem, delay)
            self._sleep(delay)
            attempt += 1

    @staticmethod
    def _check(call: str, target: str, response: httpx.Response) -> None:
        if response.is_success:
            return
        body = _excerpt(response)
        raise ScicatError(call, target, f"HTTP {response.status_code}: {body}", response.status_code, body)


def job_status_body(
    schema: str,
    status: JobStatus,
    message: str | None = None,
    result: JobResultObject | None = None,
) -> dict[str, Any]:
    """PATCH body of a job status update: v3 `jobStatusMessage`, v4 `statusCode` + `statusMessage`."""
    result_object = result.to_wire() if result is not None else None
    if schema == "v3":
        # v3 has no status message field: a message worth keeping goes into the result object.
        body: dict[str, Any] = {"jobStatusMessage": status.value}
        if message and status != JobStatus.IN_PROGRESS:
            result_object = {**(result_object or {}), "message": message}
    elif schema == "v4":
        body = {"statusCode": status.value, "statusMessage": message or status.value}
    else:
        raise ValueError(f"job status schema {schema!r} is not known; use 'v3' or 'v4' (SCICAT_JOB_STATUS_SCHEMA)")
    if result_object is not None:
        body["jobResultObject"] = result_object
    return body
