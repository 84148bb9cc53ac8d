"""FastAPI app: `POST /jobs` from SciCat starts the archival or retrieval deployment."""

from __future__ import annotations

import hmac
import logging
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from archiver.api.runs import PrefectUnavailable, readiness, start_job_run
from archiver.api.settings import ApiSettings

log = logging.getLogger("archiver.api")


class JobDocument(BaseModel):
    """The job SciCat sends; only id and type are needed, everything else is kept as sent."""

    model_config = ConfigDict(extra="allow")

    id: UUID
    type: str
    jobParams: dict[str, Any] | None = None

    def dataset_ids(self) -> list[str] | None:
        datasets = (self.jobParams or {}).get("datasetList")
        if not isinstance(datasets, list):
            return None
        pids = [d.get("pid") for d in datasets if isinstance(d, dict)]
        return [pid for pid in pids if isinstance(pid, str)] or None


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
        responses={400: {"description": "unknown job type"}, 401: {}, 503: {"description": "Prefect unavailable"}},
    )
    async def create_job(job: JobDocument) -> FlowRunStarted:
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
