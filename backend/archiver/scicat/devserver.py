"""A SciCat-compatible development server: the part of SciCat's API the archiver uses.

State lives in memory. Routes are served under both `/api/v3` and `/api/v4`.
Besides SciCat's calls it has endpoints under `/dev/` (no token needed) for
tests and operators: the request log, fault injection, token expiry and a dump
of the state. See docs/scicat.md.

Like SciCat (Express) it takes a PID as one path segment: a `/` inside a PID
must arrive as %2F, an unencoded one does not match any route (404).
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, NonNegativeInt, ValidationError

from archiver.scicat.models import Datablock, Dataset, Job, OrigDatablock

API_PREFIXES = ("/api/v3", "/api/v4")
LOGIN_PATHS = {prefix + "/auth/login" for prefix in API_PREFIXES}
DEFAULT_LIFECYCLE = {
    "archivable": True,
    "retrievable": False,
    "archiveStatusMessage": "datasetCreated",
    "retrieveStatusMessage": "",
}
_TARGET = re.compile(r"^/api/v\d+/(datasets|jobs)/([^/]+)")


@dataclass(frozen=True)
class DevServerConfig:
    users: dict[str, str] = field(repr=False)  # username -> password
    archiver_url: str | None = None  # where a new job is POSTed, e.g. http://archiver-api:8000/jobs
    archiver_auth: str | None = field(default=None, repr=False)  # Authorization header value sent there
    archiver_timeout_s: float = 30.0


@dataclass
class DevState:
    datasets: dict[str, dict] = field(default_factory=dict)
    origdatablocks: dict[str, dict] = field(default_factory=dict)
    datablocks: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> username
    requests: list[dict] = field(default_factory=list)
    next_seq: int = 1
    fault_count: int = 0
    fault_status: int = 503

    def log_request(self, method: str, raw_path: str, route_path: str, body: bytes) -> dict:
        entry: dict[str, Any] = {"seq": self.next_seq, "method": method, "path": raw_path, "body": _logged_body(body)}
        match = _TARGET.match(route_path)
        if match:
            entry["pid" if match[1] == "datasets" else "jobId"] = _segment(match[2])
        self.next_seq += 1
        self.requests.append(entry)
        return entry


class FaultRequest(BaseModel):
    count: NonNegativeInt = Field(description="how many of the next SciCat calls fail")
    status: int = Field(503, ge=400, le=599)


class LoginRequest(BaseModel):
    username: str
    password: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"statusCode": status, "message": message}, status_code=status)


def _not_found(what: str, key: str) -> JSONResponse:
    return _error(404, f"{what} {key!r} not found")


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
        if self.state.fault_count > 0:
            self.state.fault_count -= 1
            entry["fault"] = True
            return await self._answer(entry, _error(self.state.fault_status, "fault injected by /dev/faults"), scope, send)
        if scope["path"] not in LOGIN_PATHS and self._user(scope) is None:
            return await self._answer(entry, _error(401, "Unauthorized"), scope, send)

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
    async def _answer(entry: dict, response: JSONResponse, scope, send) -> None:
        entry["status"] = response.status_code

        async def no_body():
            return {"type": "http.request", "body": b"", "more_body": False}

        await response(scope, no_body, send)


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


def _validated(model: type[BaseModel], data: Any) -> dict | JSONResponse:
    """`data` checked against `model` as SciCat would; the wire form, or a 422 answer."""
    try:
        return model.model_validate(data).to_wire()
    except ValidationError as e:
        return JSONResponse({"statusCode": 422, "message": "invalid body", "detail": json.loads(e.json())}, status_code=422)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None  # fails validation below: 422


def create_app(config: DevServerConfig, state: DevState | None = None) -> FastAPI:
    state = state or DevState()
    app = FastAPI(title="SciCat development server", docs_url="/dev/docs", openapi_url="/dev/openapi.json")
    api = APIRouter()

    @api.post("/auth/login", status_code=201)
    async def login(body: LoginRequest):
        if config.users.get(body.username) != body.password or not body.password:
            return _error(401, "Unauthorized: wrong username or password")
        token = secrets.token_urlsafe(24)
        state.tokens[token] = body.username
        return {"access_token": token, "id": token, "userId": body.username, "created": _now()}

    # --- datasets ---

    @api.post("/datasets", status_code=201)
    async def create_dataset(request: Request):
        data = _validated(Dataset, await _json_body(request))
        if isinstance(data, JSONResponse):
            return data
        for required in ("type", "ownerGroup"):
            if not data.get(required):
                return _error(422, f"dataset needs '{required}'")
        pid = data.setdefault("pid", f"20.500.12269/{uuid.uuid4()}")
        if pid in state.datasets:
            return _error(409, f"dataset {pid!r} exists already")
        data["datasetlifecycle"] = {**DEFAULT_LIFECYCLE, **data.get("datasetlifecycle", {})}
        data.setdefault("createdAt", _now())
        state.datasets[pid] = data
        return data

    @api.get("/datasets/{pid}")
    async def get_dataset(pid: str):
        pid = _segment(pid)
        return state.datasets.get(pid) or _not_found("dataset", pid)

    @api.patch("/datasets/{pid}")
    async def patch_dataset(pid: str, request: Request):
        pid = _segment(pid)
        if pid not in state.datasets:
            return _not_found("dataset", pid)
        patch = _validated(Dataset, await _json_body(request))
        if isinstance(patch, JSONResponse):
            return patch
        if patch.pop("pid", pid) != pid:
            return _error(422, "pid cannot be changed")
        dataset = state.datasets[pid]
        lifecycle = patch.pop("datasetlifecycle", None)
        dataset.update(patch)
        if lifecycle is not None:
            dataset["datasetlifecycle"] = {**dataset.get("datasetlifecycle", {}), **lifecycle}
        dataset["updatedAt"] = _now()
        return dataset

    # --- origdatablocks and datablocks ---

    def add_block(kind: type[BaseModel], store: dict[str, dict], pid: str, data: Any) -> dict | JSONResponse:
        pid = _segment(pid)
        if pid not in state.datasets:
            return _not_found("dataset", pid)
        block = _validated(kind, data)
        if isinstance(block, JSONResponse):
            return block
        block["datasetId"] = pid
        block["id"] = str(uuid.uuid4())
        block.setdefault("ownerGroup", state.datasets[pid].get("ownerGroup"))
        store[block["id"]] = block
        return JSONResponse(block, status_code=201)

    def list_blocks(store: dict[str, dict], pid: str) -> list[dict] | JSONResponse:
        pid = _segment(pid)
        if pid not in state.datasets:
            return _not_found("dataset", pid)
        return [block for block in store.values() if block["datasetId"] == pid]

    @api.post("/datasets/{pid}/origdatablocks", status_code=201)
    async def create_origdatablock(pid: str, request: Request):
        return add_block(OrigDatablock, state.origdatablocks, pid, await _json_body(request))

    @api.get("/datasets/{pid}/origdatablocks")
    async def get_origdatablocks(pid: str):
        return list_blocks(state.origdatablocks, pid)

    @api.post("/datasets/{pid}/datablocks", status_code=201)
    async def create_datablock(pid: str, request: Request):
        return add_block(Datablock, state.datablocks, pid, await _json_body(request))

    @api.get("/datasets/{pid}/datablocks")
    async def get_datablocks(pid: str):
        return list_blocks(state.datablocks, pid)

    @api.delete("/datasets/{pid}/datablocks/{block_id}")
    async def delete_datablock(pid: str, block_id: str):
        pid, block_id = _segment(pid), _segment(block_id)
        if pid not in state.datasets:
            return _not_found("dataset", pid)
        block = state.datablocks.get(block_id)
        if block is None or block["datasetId"] != pid:
            return _not_found(f"datablock of dataset {pid!r}", block_id)
        return state.datablocks.pop(block_id)

    # --- jobs ---

    @api.post("/jobs", status_code=201)
    async def create_job(request: Request):
        job = _validated(Job, await _json_body(request))
        if isinstance(job, JSONResponse):
            return job
        job_id = job.setdefault("id", str(uuid.uuid4()))
        if job_id in state.jobs:
            return _error(409, f"job {job_id!r} exists already")
        if not any(key in job for key in ("jobStatusMessage", "statusCode")):
            job["jobStatusMessage"] = "jobSubmitted"
        job.setdefault("creationTime", _now())
        state.jobs[job_id] = job
        request.scope["dev_log_entry"]["jobId"] = job_id
        if config.archiver_url:
            request.scope["dev_log_entry"]["forward"] = await _forward_job(config, job)
        return JSONResponse(job, status_code=201)

    @api.get("/jobs/{job_id}")
    async def get_job(job_id: str):
        job_id = _segment(job_id)
        return state.jobs.get(job_id) or _not_found("job", job_id)

    @api.patch("/jobs/{job_id}")
    async def patch_job(job_id: str, request: Request):
        job_id = _segment(job_id)
        if job_id not in state.jobs:
            return _not_found("job", job_id)
        patch = await _json_body(request)
        if not isinstance(patch, dict):
            return _error(422, "job update must be a JSON object")
        merged = _validated(Job, {**state.jobs[job_id], **patch, "id": job_id})
        if isinstance(merged, JSONResponse):
            return merged
        merged["updatedAt"] = _now()
        state.jobs[job_id] = merged
        return merged

    for prefix in API_PREFIXES:
        app.include_router(api, prefix=prefix)

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
        state.fault_count, state.fault_status = body.count, body.status
        return body

    @app.get("/dev/faults")
    async def get_faults():
        return FaultRequest(count=state.fault_count, status=state.fault_status)

    @app.delete("/dev/tokens")
    async def expire_tokens():
        """Forget every token, as if they expired: the next calls get 401."""
        count = len(state.tokens)
        state.tokens.clear()
        return {"expired": count}

    @app.get("/dev/state")
    async def dump_state():
        return {
            "nextSeq": state.next_seq, "datasets": state.datasets, "origdatablocks": state.origdatablocks,
            "datablocks": state.datablocks, "jobs": state.jobs,
        }

    app.add_middleware(_DevMiddleware, state=state)
    return app


async def _forward_job(config: DevServerConfig, job: dict) -> dict:
    """What SciCat's job configuration does on creation: POST the job to the archiver."""
    headers = {"Authorization": config.archiver_auth} if config.archiver_auth else {}
    outcome: dict[str, Any] = {"url": config.archiver_url}
    try:
        async with httpx.AsyncClient(timeout=config.archiver_timeout_s) as http:
            response = await http.post(config.archiver_url, json=job, headers=headers)
        outcome["status"] = response.status_code
        outcome["answer"] = response.text[:1000]
        if not response.is_success:
            outcome["error"] = f"archiver answered HTTP {response.status_code}"
    except httpx.HTTPError as e:
        outcome["error"] = f"{e.__class__.__name__}: {e}"
    return outcome


def serve(config: DevServerConfig, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
