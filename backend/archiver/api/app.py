"""FastAPI app: `POST /jobs` from SciCat starts the archival or retrieval deployment."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from archiver.api.runs import PrefectUnavailable, readiness, start_job_run
from archiver.api.settings import ApiSettings

log = logging.getLogger("archiver.api")


class JobDocument(BaseModel):
    """The job SciCat sends; only id and type are needed. The dataset list is read from either shape
    (v4: `jobParams.datasetList`, v3: `datasetList`); without one the flow asks SciCat."""

    model_config = ConfigDict(extra="ignore")

    id: UUID
    type: str
    jobParams: dict[str, Any] | None = None
    datasetList: list[Any] | None = None

    def dataset_ids(self) -> list[str] | None:
        datasets = (self.jobParams or {}).get("datasetList") or self.datasetList
        if not isinstance(datasets, list):
            return None
        pids = [d.get("pid") for d in datasets if isinstance(d, dict)]
        return [pid for pid in pids if isinstance(pid, str)] or None


def parse_job(body: bytes) -> JobDocument:
    """The job from a request body, whatever its Content-Type: SciCat's url job action sends the JSON
    as text/plain unless configured otherwise. 422 naming the problem when it is not a job object."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPException(422, f"the body is not JSON ({e}); send the SciCat job document as a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPException(422, f"the body is JSON but not an object (got {type(data).__name__}); send the job document")
    try:
        return JobDocument.model_validate(data)
    except ValidationError as e:
        raise HTTPException(422, e.errors(include_url=False, include_input=False)) from None


class FlowRunStarted(BaseModel):
    uuid: UUID
    name: str


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    expected = settings.expected_authorization().encode()
    deployments = settings.deployments()

    def require_authorization(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            # Log that it happened, never the header's value.
            log.warning(
                "rejected %s %s from %s: %s Authorization header",
                request.method, request.url.path, request.client.host if request.client else "?",
                "wrong" if given else "missing",
            )
            raise HTTPException(401, "missing or wrong Authorization header", {"WWW-Authenticate": "Bearer"})

    root = settings.root_path
    app = FastAPI(
        title="archiver API",
        description="Receives SciCat jobs and starts Prefect flow runs for them.",
        openapi_url=f"{root}/openapi.json",
        docs_url=f"{root}/docs",
        redoc_url=None,
    )
    public = APIRouter(prefix=root)
    protected = APIRouter(prefix=root, dependencies=[Depends(require_authorization)])

    @public.get("/health/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @public.get("/health/readyz", tags=["health"])
    async def readyz():
        problems = await readiness(list(deployments.values()))
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return {"status": "ready"}

    @protected.post(
        "/jobs",
        response_model=FlowRunStarted,
        tags=["jobs"],
        responses={400: {"description": "unknown job type"}, 401: {}, 422: {"description": "not a job document"},
                   503: {"description": "Prefect unavailable"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": JobDocument.model_json_schema()},
            "text/plain": {"schema": {"type": "string", "description": "the same JSON document"}},
        }}},
    )
    async def create_job(request: Request) -> FlowRunStarted:
        job = parse_job(await request.body())
        if job.type not in deployments:
            raise HTTPException(
                400, f"unknown job type {job.type!r}; allowed types: {', '.join(sorted(deployments))}"
            )
        parameters: dict[str, Any] = {"job_id": str(job.id)}
        if (pids := job.dataset_ids()) is not None:
            parameters["dataset_ids"] = pids
        try:
            run = await start_job_run(deployments[job.type], job.type, job.id, parameters)
        except PrefectUnavailable as e:
            log.error("job %s (%s) not started: %s", job.id, job.type, e)
            raise HTTPException(503, f"job not started: {e}") from None
        log.info("job %s (%s): flow run %s (%s)", job.id, job.type, run.name, run.id)
        return FlowRunStarted(uuid=run.id, name=run.name)

    app.include_router(public)
    app.include_router(protected)
    return app
