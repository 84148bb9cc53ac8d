"""FastAPI app: `POST /jobs` from SciCat starts the archival or retrieval deployment."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from archiver.api import links
from archiver.api.jobs import JobDocument, dataset_files, dataset_ids, parse_job, read_body
from archiver.api.runs import PrefectError, readiness, start_job_run
from archiver.api.settings import ApiSettings
from archiver.api.uploads import create_upload_router
from archiver.clients.outage import retry_refused_connections
from archiver.config.deployments import DATASET_FILES, DATASET_IDS, JOB_ID

log = logging.getLogger("archiver.api")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate from a request can not make the answer unencodable (500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class FlowRunStarted(BaseModel):
    uuid: UUID
    name: str


# Declares the scheme in the OpenAPI document; the check itself is `require_authorization`'s.
AUTHORIZATION = APIKeyHeader(
    name="Authorization",
    auto_error=False,
    scheme_name="SciCatJobAction",
    description="the exact value configured in ARCHIVER_API_AUTH_FILE (e.g. `Bearer <token>`)",
)


JOB_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": JobDocument.model_json_schema()},  # `type` an enum of the job types
        "text/plain": {"schema": {"type": "string", "description": "the same JSON document"}},
    },
}


def _client(request: Request) -> str:
    """The peer address, or the forwarded one when the peer is a trusted proxy (API_FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "?"


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    retry_refused_connections()  # the API's Prefect clients ride out a server restart too (clients/outage.py)
    settings = settings or ApiSettings()
    expected = settings.expected_authorization().encode()
    deployments = settings.deployments()
    prefect_limits = settings.prefect_limits()

    def require_authorization(request: Request, given: str | None = Security(AUTHORIZATION)) -> None:
        # Runs before the handler reads the body: an unauthenticated body is never read.
        if not hmac.compare_digest((given or "").encode("utf-8", "surrogateescape"), expected):
            # Log that it happened, never the header's value.
            log.warning(
                "rejected %s %s from %s: %s Authorization header",
                request.method,
                request.url.path,
                _client(request),
                "wrong" if given else "missing",
            )
            raise HTTPException(401, "missing or wrong Authorization header", {"WWW-Authenticate": "Bearer"})

    root = settings.root_path
    app = FastAPI(
        title="archiver API",
        description="Receives SciCat jobs and starts Prefect flow runs for them.",
        openapi_url=f"{root}/openapi.json",
        docs_url=f"{root}/docs" if settings.docs_enabled else None,
        redoc_url=None,
        default_response_class=AsciiJSONResponse,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> AsciiJSONResponse:
        if 400 <= error.status_code < 500 and error.status_code not in (401, 404, 405):  # 401: logged where decided
            log.info(
                "refused %s %s from %s: %s %s",
                request.method,
                request.url.path,
                _client(request),
                error.status_code,
                error.detail,
            )
        return AsciiJSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> AsciiJSONResponse:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
        return AsciiJSONResponse({"detail": "; ".join(problems)[:1000]}, 422)

    public = APIRouter(prefix=root)
    protected = APIRouter(prefix=root, dependencies=[Depends(require_authorization)])

    @public.get("/health/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @public.get("/health/readyz", tags=["health"])
    async def readyz():
        problems = await readiness(list(deployments.values()), prefect_limits)
        if problems:
            return AsciiJSONResponse({"status": "not ready", "problems": problems}, status_code=503)
        return {"status": "ready"}

    @protected.post(
        "/jobs",
        response_model=FlowRunStarted,
        tags=["jobs"],
        responses={
            400: {"description": "unknown job type"},
            401: {"description": "missing or wrong Authorization"},
            413: {"description": "body larger than API_MAX_BODY_BYTES"},
            422: {
                "description": "not a job document, a bad dataset PID, too many datasets, or Prefect refused the run"
            },
            502: {"description": "Prefect failed"},
            503: {"description": "Prefect unreachable or unavailable"},
            504: {"description": "Prefect did not answer in time"},
        },
        openapi_extra={"requestBody": JOB_REQUEST_BODY},
    )
    async def create_job(request: Request) -> FlowRunStarted:
        body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_body_bytes)
        job = parse_job(body)
        parameters: dict[str, Any] = {JOB_ID: str(job.id)}
        if (pids := dataset_ids(job, settings.max_datasets_per_job)) is not None:
            parameters[DATASET_IDS] = pids
        if job.type == "retrieve" and (files := dataset_files(job)) is not None:
            parameters[DATASET_FILES] = files
        try:
            run = await start_job_run(deployments[job.type], job.type, job.id, parameters, prefect_limits)
        except PrefectError as e:
            log.error("job %s (%s, %s datasets) not started: %s", job.id, job.type, len(pids or []), e.message)
            raise HTTPException(e.status, f"job not started: {e.message}") from None
        log.info("job %s (%s): flow run %s (%s)", job.id, job.type, run.name, run.id)
        return FlowRunStarted(uuid=run.id, name=run.name)

    protected.include_router(links.router)
    app.include_router(public)
    app.include_router(protected)
    app.include_router(create_upload_router(settings))
    return app
