"""A SciCat-compatible development server: the part of SciCat's API the archiver uses, as strict as SciCat.

State lives in memory. Like a v4 SciCat (scicat-backend-next), login, datasets, origdatablocks and
datablocks are served under `/api/v3` only; jobs under `/api/v3` (v3 shape) and `/api/v4` (v4 shape),
one job store behind both, translated the way SciCat translates. Bodies are checked against SciCat's
whitelists (`scicat_rules`): an unknown property or a missing required one is a 400 that names it. A new
job triggers the configured job action (`scicat_job_action`), like SciCat's `url` action.

Besides SciCat's calls it has endpoints under `/dev/` (no token needed) for tests and operators: the
request log, fault injection, token expiry and a dump of the state. See docs/scicat.md.

Like SciCat (Express) it takes a PID as one path segment: a `/` inside a PID must arrive as %2F, an
unencoded one does not match any route (404).
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, NonNegativeInt

from archiver.devtools import scicat_filters
from archiver.devtools import scicat_rules as rules
from archiver.devtools.scicat_job_action import JobAction
from archiver.errors import ArchiverError

V3, V4 = "/api/v3", "/api/v4"
LOGIN_PATH = V3 + "/auth/login"
PID_PREFIX = "20.500.12269"
DEFAULT_JOB_STATUS = ("jobSubmitted", "Job submitted.")  # SciCat's jobDefaultStatusCode / ...Message
_TARGET = re.compile(r"^/api/v\d+/(datasets|jobs)/([^/]+)")


@dataclass(frozen=True)
class DevServerConfig:
    users: dict[str, str] = field(repr=False)  # username -> password
    job_action: JobAction | None = None  # called when a job is created; None: jobs are only stored
    lifecycle_endpoint: bool = False  # PATCH/GET datasets/{pid}/datasetlifecycle (SciCat >= 4.19)
    # SciCat 4.19-4.23: that PATCH answers 409 when it would leave the stored lifecycle as it is
    unchanged_lifecycle_conflict: bool = False
    groups: dict[str, list[str]] = field(default_factory=dict)  # username -> the groups of its identity


class FaultRequest(BaseModel):
    count: NonNegativeInt = Field(description="how many of the next SciCat calls fail")
    status: int = Field(503, ge=400, le=599)
    after: bool = Field(
        False,
        description="carry the call out, then answer `status` instead (a gateway that "
        "timed out waiting for SciCat's answer)",
    )
    match: str | None = Field(None, description="only calls whose 'METHOD path' contains this fail")


@dataclass
class DevState:
    datasets: dict[str, dict] = field(default_factory=dict)
    origdatablocks: dict[str, dict] = field(default_factory=dict)
    datablocks: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)  # as SciCat stores them: the v4 shape
    tokens: dict[str, str] = field(default_factory=dict)  # token -> username
    requests: list[dict] = field(default_factory=list)
    next_seq: int = 1
    faults: FaultRequest = field(default_factory=lambda: FaultRequest(count=0))

    def log_request(self, method: str, raw_path: str, route_path: str, body: bytes) -> dict:
        entry: dict[str, Any] = {"seq": self.next_seq, "method": method, "path": raw_path, "body": _logged_body(body)}
        match = _TARGET.match(route_path)
        if match:
            entry["pid" if match[1] == "datasets" else "jobId"] = _segment(match[2])
        self.next_seq += 1
        self.requests.append(entry)
        return entry

    def take_fault(self, call: str) -> FaultRequest | None:
        """The fault this call ('METHOD path') gets, counted off the pending ones; None when it gets none."""
        faults = self.faults
        if faults.count == 0 or (faults.match is not None and faults.match not in call):
            return None
        self.faults = faults.model_copy(update={"count": faults.count - 1})
        return faults


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _segment(value: str) -> str:
    """A path parameter back to its value (see `_route_path`)."""
    return value.replace("%2F", "/")


def _route_path(raw_path: str) -> str:
    """The path decoded segment by segment, keeping %2F inside a segment, so a PID stays one segment."""
    return "/".join(unquote(part).replace("/", "%2F") for part in raw_path.split("/"))


def _logged_body(body: bytes) -> Any:
    if not body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
    if isinstance(value, dict) and "password" in value:
        value = {**value, "password": "***"}
    return value


# --- SciCat's error bodies ---


def _http_error(status: int, message: str) -> JSONResponse:
    """NestJS's built-in exceptions, e.g. NotFoundException: {"statusCode": 404, "message": "Not Found"}."""
    return JSONResponse({"statusCode": status, "message": message}, status_code=status)


def _custom_error(status: int, message: str) -> JSONResponse:
    """SciCat's own `new HttpException({status, message}, status)`."""
    return JSONResponse({"status": status, "message": message}, status_code=status)


def _pipe_error(problems: list[rules.Problem]) -> JSONResponse:
    """NestJS's ValidationPipe (whitelist, forbidNonWhitelisted): every message in a list."""
    return JSONResponse(
        {"statusCode": 400, "message": [p.message for p in problems], "error": "Bad Request"}, status_code=400
    )


def _dataset_error(problems: list[rules.Problem]) -> JSONResponse:
    """SciCat's own dataset validation: class-validator's errors as a JSON string in `message`."""
    errors = [{"property": p.property, "children": [], "constraints": {p.constraint: p.message}} for p in problems]
    return _custom_error(400, json.dumps(errors))


class _DevMiddleware:
    """Routing by PID segment, the request log, injected faults and the token check."""

    def __init__(self, app, state: DevState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        scope = {**scope, "path": _route_path(raw_path)}
        if scope["path"].startswith("/dev/"):
            return await self.app(scope, receive, send)

        body = await _read_body(receive)
        entry = self.state.log_request(scope["method"], raw_path, scope["path"], body)
        scope["dev_log_entry"] = entry
        fault = self.state.take_fault(f"{scope['method']} {scope['path']}")
        if fault is not None:
            entry["fault"] = True
            if fault.after:  # carried out, its answer lost on the way back
                await self._carry_out(scope, receive, body, entry, _discard)
            return await self._answer(entry, _http_error(fault.status, "fault injected by /dev/faults"), scope, send)
        await self._carry_out(scope, receive, body, entry, send)

    async def _carry_out(self, scope, receive, body: bytes, entry: dict, send) -> None:
        user = self._user(scope)
        if scope["path"] != LOGIN_PATH and user is None:
            return await self._answer(entry, _http_error(401, "Unauthorized"), scope, send)
        scope["dev_user"] = user

        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def record_status(message):
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, replay, record_status)

    def _user(self, scope) -> str | None:
        headers = dict(scope["headers"])
        kind, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return self.state.tokens.get(token) if kind.lower() == "bearer" else None

    @staticmethod
    async def _answer(entry: dict, response: Response, scope, send) -> None:
        entry["status"] = response.status_code

        async def no_body():
            return {"type": "http.request", "body": b"", "more_body": False}

        await response(scope, no_body, send)


async def _discard(message) -> None:
    """An ASGI `send` for an answer that never reaches the client."""


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


class _BadJson(ArchiverError):
    pass


async def _json_body(request: Request) -> Any:
    """The body as JSON, {} when empty; a body that is not JSON is a 400, as Express's JSON parser answers."""
    if not await request.body():
        return {}
    try:
        return await request.json()
    except ValueError as e:
        raise _BadJson() from e


def _created(value: Any) -> Response:
    """201 with `value`; SciCat answers an empty 201 where its handler returns null."""
    return JSONResponse(value, status_code=201) if value is not None else Response(status_code=201)


def lifecycle_defaults() -> dict:
    now = _now()
    return {
        name: now if default == "now" else default
        for name, (_, default) in rules.LIFECYCLE_DEFAULTS.items()
        if default is not None
    }


def job_v3(job: dict) -> dict:
    """A stored (v4) job as SciCat's /api/v3 shows it (mapJobClassV4toV3 / OutputJobV3Dto)."""
    params = dict(job.get("jobParams") or {})
    dataset_list = params.pop("datasetList", [])
    execution_time = params.pop("executionTime", None)
    view = {
        "id": job["id"],
        "emailJobInitiator": job.get("contactEmail"),
        "type": job["type"],
        "creationTime": job["createdAt"],
        "jobParams": {"username": job.get("createdBy"), **params},
        "jobStatusMessage": job["statusCode"],
        "datasetList": dataset_list,
        "jobResultObject": job.get("jobResultObject"),
    }
    if execution_time is not None:
        view["executionTime"] = execution_time
    return view


def create_app(config: DevServerConfig, state: DevState | None = None) -> FastAPI:
    state = state or DevState()
    app = FastAPI(title="SciCat development server", docs_url="/dev/docs", openapi_url="/dev/openapi.json")
    v3 = APIRouter()
    jobs_v3 = APIRouter()
    jobs_v4 = APIRouter()

    @v3.post("/auth/login", status_code=201)
    async def login(request: Request):
        # Passport's local strategy reads username and password and ignores anything else in the body.
        body = await _json_body(request)
        username = body.get("username") if isinstance(body, dict) else None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(username, str) or not password or config.users.get(username) != password:
            return _http_error(401, "Unauthorized")
        token = secrets.token_urlsafe(24)
        state.tokens[token] = username
        return {
            "access_token": token,
            "id": token,
            "userId": username,
            "created": _now(),
            "ttl": 3600,
            "expires_in": 3600,
            "user": {"username": username},
        }

    # --- datasets (/api/v3 only) ---

    def dataset_or_404(pid: str) -> dict | JSONResponse:
        return state.datasets.get(_segment(pid)) or _http_error(404, "Not Found")

    @v3.post("/datasets", status_code=201)
    async def create_dataset(request: Request):
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _custom_error(400, "a dataset must be a JSON object")
        if body.get("type") not in rules.DATASET_TYPES:
            return _custom_error(400, "Wrong dataset type!")
        table = rules.RAW_DATASET if body["type"] == "raw" else rules.DERIVED_DATASET
        problems = rules.check(body, table | rules.DATASET_CREATE_EXTRA)
        if problems:
            return _dataset_error(problems)
        pid = body.get("pid") or f"{PID_PREFIX}/{uuid.uuid4()}"
        if pid in state.datasets:
            return _custom_error(409, "A dataset with this this unique key already exists!")
        user = request.scope["dev_user"]
        now = _now()
        dataset = {
            **body,
            "pid": pid,
            "version": "v3",
            "createdBy": user,
            "updatedBy": user,
            "createdAt": now,
            "updatedAt": now,
            "datasetlifecycle": replaced_lifecycle(body.get("datasetlifecycle") or {}),
        }
        state.datasets[pid] = dataset
        return dataset

    def replaced_lifecycle(sent: Any) -> dict:
        """What SciCat's database makes of a lifecycle object: the known fields sent, defaults for the rest."""
        return lifecycle_defaults() | rules.known_fields(sent if isinstance(sent, dict) else {}, rules.LIFECYCLE)

    @v3.get("/datasets/{pid}")
    async def get_dataset(pid: str):
        return dataset_or_404(pid)

    @v3.patch("/datasets/{pid}")
    async def patch_dataset(pid: str, request: Request):
        dataset = dataset_or_404(pid)
        if isinstance(dataset, JSONResponse):
            return dataset
        body = await _json_body(request)
        table = rules.RAW_DATASET if dataset.get("type") == "raw" else rules.DERIVED_DATASET
        problems = rules.check(body, table, partial=True)
        lifecycle = body.get("datasetlifecycle") if isinstance(body, dict) else None
        if lifecycle is not None:
            problems += rules.check(
                rules.known_fields(lifecycle, rules.LIFECYCLE) if isinstance(lifecycle, dict) else lifecycle,
                rules.LIFECYCLE,
                partial=True,
                prefix="datasetlifecycle.",
            )
        if problems:
            return _dataset_error(problems)
        dataset.update(body)
        if lifecycle is not None:  # SciCat sets the whole sub-document: a replace, not a merge
            dataset["datasetlifecycle"] = replaced_lifecycle(lifecycle)
        dataset["updatedBy"], dataset["updatedAt"] = request.scope["dev_user"], _now()
        return dataset

    if config.lifecycle_endpoint:

        @v3.get("/datasets/{pid}/datasetlifecycle")
        async def get_lifecycle(pid: str):
            dataset = dataset_or_404(pid)
            return dataset if isinstance(dataset, JSONResponse) else dataset["datasetlifecycle"]

        @v3.patch("/datasets/{pid}/datasetlifecycle")
        async def patch_lifecycle(pid: str, request: Request):
            """SciCat >= 4.19: merges the fields sent into the lifecycle; null resets a field to its default.
            With `unchanged_lifecycle_conflict` (4.19-4.23) an update that changes nothing is a 409."""
            body = await _json_body(request)
            problems = rules.check(body, rules.LIFECYCLE, partial=True)
            if problems:
                return _pipe_error(problems)
            dataset = dataset_or_404(pid)
            if isinstance(dataset, JSONResponse):
                return dataset
            defaults = lifecycle_defaults()
            merged = {**dataset["datasetlifecycle"], **body}
            merged = {
                name: defaults.get(name) if value is None else value
                for name, value in merged.items()
                if value is not None or name in defaults
            }
            if config.unchanged_lifecycle_conflict and merged == dataset["datasetlifecycle"]:
                return _http_error(409, f"Dataset lifecycle of {_segment(pid)} is already in the requested state")
            dataset["datasetlifecycle"] = merged
            dataset["updatedBy"], dataset["updatedAt"] = request.scope["dev_user"], _now()
            return dataset["datasetlifecycle"]

    # --- origdatablocks and datablocks of a dataset (/api/v3 only) ---

    def add_block(table: rules.Rules, store: dict[str, dict], pid: str, body: Any, user: str) -> Response:
        problems = rules.check(body, table)
        if problems:
            return _pipe_error(problems)
        dataset = state.datasets.get(_segment(pid))
        if dataset is None:
            return _created(None)  # SciCat's handler returns null for an unknown dataset
        now = _now()
        block = {
            "_id": str(uuid.uuid4()),
            **body,
            "datasetId": dataset["pid"],
            "ownerGroup": dataset["ownerGroup"],
            "accessGroups": dataset.get("accessGroups", []),
            "createdBy": user,
            "updatedBy": user,
            "createdAt": now,
            "updatedAt": now,
        }
        if dataset.get("instrumentGroup"):
            block["instrumentGroup"] = dataset["instrumentGroup"]
        block["id"] = block["_id"]
        store[block["id"]] = block
        return _created(block)

    def list_blocks(store: dict[str, dict], pid: str) -> list[dict]:
        return [block for block in store.values() if block["datasetId"] == _segment(pid)]  # [] for an unknown dataset

    @v3.post("/datasets/{pid}/origdatablocks", status_code=201)
    async def create_origdatablock(pid: str, request: Request):
        return add_block(
            rules.ORIGDATABLOCK, state.origdatablocks, pid, await _json_body(request), request.scope["dev_user"]
        )

    @v3.get("/datasets/{pid}/origdatablocks")
    async def get_origdatablocks(pid: str):
        return list_blocks(state.origdatablocks, pid)

    @v3.post("/datasets/{pid}/datablocks", status_code=201)
    async def create_datablock(pid: str, request: Request):
        return add_block(rules.DATABLOCK, state.datablocks, pid, await _json_body(request), request.scope["dev_user"])

    @v3.get("/datasets/{pid}/datablocks")
    async def get_datablocks(pid: str):
        return list_blocks(state.datablocks, pid)

    @v3.delete("/datasets/{pid}/datablocks/{block_id}")
    async def delete_datablock(pid: str, block_id: str):
        block = state.datablocks.get(_segment(block_id))
        if block is None or block["datasetId"] != _segment(pid):
            return Response(status_code=200)  # SciCat: nothing deleted, an empty 200
        return state.datablocks.pop(block["id"])

    # --- jobs: one store, the v4 shape; /api/v3 translates ---

    async def create_job(request: Request, body: Any) -> dict | JSONResponse:
        """SciCat's createJob: check the v4 body, store the job, then run the job action."""
        problems = rules.check(body, rules.JOB_CREATE_V4)
        if problems:
            return _pipe_error(problems)
        if body["type"] not in rules.JOB_TYPES:
            return _custom_error(400, f"Invalid job type: {body['type']}")
        dataset_list = body["jobParams"].get("datasetList", [])
        problems = rules.check(
            {"datasetList": dataset_list},
            {"datasetList": rules.Field("list", items=rules.DATASET_LIST_ENTRY)},
            prefix="jobParams.",
        )
        if problems:
            return _pipe_error(problems)
        missing = [entry["pid"] for entry in dataset_list if entry["pid"] not in state.datasets]
        if missing:
            return _custom_error(400, f"Datasets with pid {', '.join(missing)} do not exist.")
        user = request.scope["dev_user"]
        first = state.datasets[dataset_list[0]["pid"]] if dataset_list else {}
        now = _now()
        job = {
            "id": str(uuid.uuid4()),
            "type": body["type"],
            "ownerUser": body.get("ownerUser", user),
            "ownerGroup": body.get("ownerGroup", first.get("ownerGroup")),
            "accessGroups": [],
            "contactEmail": body.get("contactEmail"),
            "jobParams": body["jobParams"],
            "statusCode": DEFAULT_JOB_STATUS[0],
            "statusMessage": DEFAULT_JOB_STATUS[1],
            "configVersion": "scicat-dev",
            "createdBy": user,
            "updatedBy": user,
            "createdAt": now,
            "updatedAt": now,
        }
        state.jobs[job["id"]] = job
        entry = request.scope["dev_log_entry"]
        entry["jobId"] = job["id"]
        if config.job_action is not None:
            outcome = entry["forward"] = await config.job_action.perform(job)
            if "status" not in outcome:  # no answer: fetch throws, Nest answers 500
                return _http_error(500, "Internal server error")
            if outcome.get("error"):
                return _custom_error(outcome["status"], f"Got response: {outcome['answer']}")
        return job

    def job_or_invalid(job_id: str) -> dict | JSONResponse:
        return state.jobs.get(_segment(job_id)) or _custom_error(400, "Invalid job id.")

    def update_job(job: dict, update: dict, user: str) -> dict:
        job.update(
            {
                name: update[name]
                for name in ("statusCode", "statusMessage", "jobResultObject")
                if update.get(name) is not None
            }
        )
        job["updatedBy"], job["updatedAt"] = user, _now()
        return job

    @jobs_v4.post("/jobs", status_code=201)
    async def create_job_v4(request: Request):
        job = await create_job(request, await _json_body(request))
        return job if isinstance(job, JSONResponse) else _created(job)

    @jobs_v3.post("/jobs", status_code=201)
    async def create_job_v3(request: Request):
        body = await _json_body(request)
        if isinstance(body, dict) and body.get("type") in rules.JOB_TYPES:
            # CreateJobV3MappingInterceptor: builds the v4 body from the v3 fields, drops everything else
            v3_body = rules.known_fields(body, rules.JOB_CREATE_V3_FIELDS)
            params = {key: value for key, value in (v3_body.get("jobParams") or {}).items() if key != "datasetList"}
            params = {"datasetList": v3_body.get("datasetList") or [], **params}
            if v3_body.get("executionTime"):
                params["executionTime"] = v3_body["executionTime"]
            body = {"type": body["type"], "jobParams": params}
            if v3_body.get("emailJobInitiator"):
                body["contactEmail"] = v3_body["emailJobInitiator"]
            if "ownerGroup" in params:
                body["ownerGroup"] = params["ownerGroup"]
        job = await create_job(request, body)
        return job if isinstance(job, JSONResponse) else _created(job_v3(job))

    @jobs_v4.get("/jobs/{job_id}")
    async def get_job_v4(job_id: str):
        return state.jobs.get(_segment(job_id)) or _http_error(404, "Not Found")

    @jobs_v3.get("/jobs/{job_id}")
    async def get_job_v3(job_id: str):
        job = state.jobs.get(_segment(job_id))
        return job_v3(job) if job else _http_error(404, "Not Found")

    @jobs_v4.patch("/jobs/{job_id}")
    async def patch_job_v4(job_id: str, request: Request):
        body = await _json_body(request)
        problems = rules.check(body, rules.JOB_UPDATE_V4)
        if problems:
            return _pipe_error(problems)
        job = job_or_invalid(job_id)
        return job if isinstance(job, JSONResponse) else update_job(job, body, request.scope["dev_user"])

    @jobs_v3.patch("/jobs/{job_id}")
    async def patch_job_v3(job_id: str, request: Request):
        job = job_or_invalid(job_id)
        if isinstance(job, JSONResponse):
            return job
        body = await _json_body(request)
        # UpdateJobV3MappingInterceptor: jobStatusMessage becomes both statusCode and statusMessage
        v3_body = rules.known_fields(body, rules.JOB_UPDATE_V3_FIELDS) if isinstance(body, dict) else {}
        result = v3_body.get("jobResultObject")
        if v3_body.get("executionTime"):
            result = {**(result or {}), "executionTime": v3_body["executionTime"]}
        update = {
            "statusCode": v3_body.get("jobStatusMessage") or job["statusCode"],
            "statusMessage": v3_body.get("jobStatusMessage") or job["statusMessage"],
            "jobResultObject": result,
        }
        problems = rules.check(update, rules.JOB_UPDATE_V4)
        if problems:
            return _pipe_error(problems)
        return job_v3(update_job(job, update, request.scope["dev_user"]))

    add_datablock_listing(v3, state)
    add_user_routes(app, v3, config)
    app.include_router(v3, prefix=V3)
    app.include_router(jobs_v3, prefix=V3)
    app.include_router(jobs_v4, prefix=V4)

    @app.exception_handler(_BadJson)
    async def bad_json(request, exc):
        return JSONResponse(
            {"statusCode": 400, "message": "the body is not valid JSON", "error": "Bad Request"}, status_code=400
        )

    # --- development endpoints (no token) ---

    @app.get("/dev/health")
    async def health():
        return {"ok": True}

    @app.get("/dev/requests")
    async def requests(since: int = 0):
        """The SciCat calls received, oldest first (seq > since)."""
        return [entry for entry in state.requests if entry["seq"] > since]

    @app.delete("/dev/requests")
    async def clear_requests():
        state.requests.clear()
        return {"next_seq": state.next_seq}

    @app.post("/dev/faults")
    async def set_faults(body: FaultRequest):
        state.faults = body
        return body

    @app.get("/dev/faults")
    async def get_faults():
        return state.faults

    @app.delete("/dev/tokens")
    async def expire_tokens():
        """Forget every token, as if they expired: the next calls get 401."""
        count = len(state.tokens)
        state.tokens.clear()
        return {"expired": count}

    @app.get("/dev/state")
    async def dump_state():
        """Everything stored; jobs as stored (v4) plus `jobStatusMessage`, what /api/v3 shows as their status."""
        jobs = {job_id: {**job, "jobStatusMessage": job["statusCode"]} for job_id, job in state.jobs.items()}
        return {
            "nextSeq": state.next_seq,
            "datasets": state.datasets,
            "origdatablocks": state.origdatablocks,
            "datablocks": state.datablocks,
            "jobs": jobs,
        }

    app.add_middleware(_DevMiddleware, state=state)
    return app


def add_datablock_listing(router: APIRouter, state: DevState) -> None:
    """`GET /api/v3/datablocks?filter=...`: SciCat's DatablocksController.findAll (`scicat_filters` says how the
    filter is read). No access filter: the archiver's account, the only one that lists, may read any datablock
    in SciCat (it is in DELETE_GROUPS and ADMIN_GROUPS: DatablockReadAny). A user added through /dev/users
    sees them all too, where SciCat would show only its groups' datablocks."""

    @router.get("/datablocks")
    async def list_datablocks(filter: str | None = None):  # noqa: A002 - SciCat's parameter name
        try:
            chosen = scicat_filters.parse_filter(filter)
        except scicat_filters.FilterRefused as refused:
            return JSONResponse(refused.body, status_code=refused.status)
        return scicat_filters.apply(list(state.datablocks.values()), chosen)


class DevUser(BaseModel):
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list, description="accessGroups of the user's identity")


def add_user_routes(app: FastAPI, v3: APIRouter, config: DevServerConfig) -> None:
    """SciCat's `users/my/self` and `users/my/identity` (src/users/users.controller.ts), and `/dev/users` to
    add accounts. A token is required (the middleware answers 401); `self` is a ReturnedUserDto (never the
    password), `identity` a UserIdentity whose `profile.accessGroups` are the user's groups."""

    def user_id(username: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"scicat-dev-user:{username}"))

    @v3.get("/users/my/self")
    async def my_self(request: Request):
        username = request.scope["dev_user"]
        return {
            "id": user_id(username),
            "username": username,
            "email": f"{username}@scicat-dev.invalid",
            "authStrategy": "local",
        }

    @v3.get("/users/my/identity")
    async def my_identity(request: Request):
        username = request.scope["dev_user"]
        groups = config.groups.get(username, [])
        return {
            "authScheme": "local",
            "provider": "local",
            "userId": user_id(username),
            "externalId": username,
            "created": _now(),
            "modified": _now(),
            "credentials": {},
            "profile": {
                "id": user_id(username),
                "username": username,
                "displayName": username,
                "email": f"{username}@scicat-dev.invalid",
                "emails": [],
                "thumbnailPhoto": "",
                "accessGroups": list(groups),
            },
        }

    @app.post("/dev/users", status_code=201)
    async def add_user(user: DevUser):
        """Add (or replace) an account that can log in, with its groups."""
        config.users[user.username] = user.password
        config.groups[user.username] = list(user.groups)
        return {"username": user.username, "groups": user.groups}


def serve(config: DevServerConfig, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
