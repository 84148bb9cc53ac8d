"""Starting (or finding) the Prefect flow run for a SciCat job; Prefect's failures sorted by cause."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio
import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from archiver.config.deployments import job_run_tags
from archiver.errors import ArchiverError

DETAIL_CHARS = 300  # of Prefect's answer quoted in an error: its 422s echo the whole request


class PrefectError(ArchiverError):
    """Nothing was started; `status` is what the API answers and `message` says why (short, no request echo)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class StartedRun:
    id: UUID
    name: str


@dataclass(frozen=True)
class PrefectLimits:
    """How long the API waits for Prefect on one request: Prefect's client retries 5 times with exponential
    back-off by default (minutes); SciCat waits on the other end."""

    max_retries: int = 2
    timeout_s: float = 30


def run_name(job_type: str, job_id: UUID) -> str:
    return f"{job_type}-job-{job_id}"


def idempotency_key(job_id: UUID) -> str:
    return f"scicat-job-{job_id}"


def _prefect_says(response: httpx.Response) -> str:
    """The gist of a Prefect error answer, without the request body its validation errors echo."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:DETAIL_CHARS]
    if isinstance(data, dict) and isinstance(data.get("exception_detail"), list):
        said = "; ".join(
            str(d.get("msg", d))[:DETAIL_CHARS] for d in data["exception_detail"][:3] if isinstance(d, dict)
        )
    elif isinstance(data, dict):
        said = str(data.get("detail") or data.get("exception_message") or "")
    else:
        said = str(data)
    return said[:DETAIL_CHARS]


def _by_cause(error: httpx.HTTPError) -> PrefectError:
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        said = _prefect_says(error.response)
        if status in (401, 403):
            # The archiver's own configuration is wrong, not the job: SciCat may retry once it is fixed.
            return PrefectError(
                502,
                f"Prefect refused the archiver API's credentials (HTTP {status}); check PREFECT_API_AUTH_STRING_FILE",
            )
        if 400 <= status < 500:
            # Prefect refused this request's content (e.g. parameters over its size limit): the same job
            # would be refused again, so it is the job's problem, not a moment of unavailability.
            return PrefectError(422, f"Prefect refused the flow run (HTTP {status}): {said}")
        if status == 503:
            return PrefectError(503, f"Prefect is unavailable (HTTP 503 after retries): {said}")
        return PrefectError(502, f"Prefect failed (HTTP {status}): {said}")
    return PrefectError(503, f"Prefect API unreachable: {error.__class__.__name__}: {str(error)[:DETAIL_CHARS]}")


@contextlib.contextmanager
def _bounded(limits: PrefectLimits) -> Iterator[None]:
    """Prefect calls within the API's retry and time bounds; TimeoutError past `limits.timeout_s`."""
    with (
        temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: limits.max_retries}),
        anyio.fail_after(limits.timeout_s),
    ):
        yield


async def start_job_run(
    deployment: str,
    job_type: str,
    job_id: UUID,
    parameters: dict[str, Any],
    limits: PrefectLimits = PrefectLimits(),
) -> StartedRun:
    """Create a run of `deployment` for the job, or return the one already created for it; PrefectError otherwise."""
    try:
        with _bounded(limits):
            async with get_client() as client:
                try:
                    found = await client.read_deployment_by_name(deployment)
                except ObjectNotFound:
                    raise PrefectError(
                        503,
                        f"deployment {deployment!r} is not registered in Prefect; "
                        "run the prefect-flows-deployment one-shot",
                    ) from None
                run = await client.create_flow_run_from_deployment(
                    found.id,
                    parameters=parameters,
                    name=run_name(job_type, job_id),
                    idempotency_key=idempotency_key(job_id),
                    tags=job_run_tags(job_type, job_id),
                )
    except TimeoutError:
        raise PrefectError(
            504,
            f"Prefect did not answer within {limits.timeout_s:g} s (API_PREFECT_TIMEOUT_S); "
            "sending the job again is safe (it finds the run if one was created)",
        ) from None
    except httpx.HTTPError as e:
        raise _by_cause(e) from None
    return StartedRun(run.id, run.name)


async def readiness(deployments: list[str], limits: PrefectLimits = PrefectLimits()) -> dict[str, str]:
    """Problems keyed by what is not ready; empty when Prefect answers and every deployment exists."""
    problems: dict[str, str] = {}
    try:
        with _bounded(limits):
            async with get_client() as client:
                unhealthy = await client.api_healthcheck()
                if unhealthy is not None:
                    return {"prefect": f"not reachable: {str(unhealthy)[:DETAIL_CHARS]}"}
                for name in deployments:
                    try:
                        await client.read_deployment_by_name(name)
                    except ObjectNotFound:
                        problems[name] = "deployment not registered"
    except TimeoutError:
        problems["prefect"] = f"no answer within {limits.timeout_s:g} s (API_PREFECT_TIMEOUT_S)"
    except httpx.HTTPError as e:
        problems["prefect"] = _by_cause(e).message
    return problems
