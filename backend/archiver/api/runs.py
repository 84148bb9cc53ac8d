"""Starting (or finding) the Prefect flow run for a SciCat job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound


class PrefectUnavailable(Exception):
    """Prefect's API cannot be reached or cannot serve the request; nothing was started."""


@dataclass(frozen=True)
class StartedRun:
    id: UUID
    name: str


def run_name(job_type: str, job_id: UUID) -> str:
    return f"{job_type}-job-{job_id}"


def idempotency_key(job_id: UUID) -> str:
    return f"scicat-job-{job_id}"


async def start_job_run(deployment: str, job_type: str, job_id: UUID, parameters: dict[str, Any]) -> StartedRun:
    """Create a run of `deployment` for the job, or return the one already created for it."""
    try:
        async with get_client() as client:
            try:
                found = await client.read_deployment_by_name(deployment)
            except ObjectNotFound:
                raise PrefectUnavailable(
                    f"deployment {deployment!r} is not registered in Prefect; "
                    "run the prefect-flows-deployment one-shot"
                ) from None
            run = await client.create_flow_run_from_deployment(
                found.id,
                parameters=parameters,
                name=run_name(job_type, job_id),
                idempotency_key=idempotency_key(job_id),
                tags=[f"scicat-job:{job_id}", f"job-type:{job_type}"],
            )
    except httpx.HTTPError as e:
        raise PrefectUnavailable(f"Prefect API not reachable: {e.__class__.__name__}: {e}") from None
    return StartedRun(run.id, run.name)


async def readiness(deployments: list[str]) -> dict[str, str]:
    """Problems keyed by what is not ready; empty when Prefect answers and every deployment exists."""
    problems: dict[str, str] = {}
    try:
        async with get_client() as client:
            unhealthy = await client.api_healthcheck()
            if unhealthy is not None:
                return {"prefect": f"not reachable: {unhealthy}"}
            for name in deployments:
                try:
                    await client.read_deployment_by_name(name)
                except ObjectNotFound:
                    problems[name] = "deployment not registered"
    except httpx.HTTPError as e:
        problems["prefect"] = f"not reachable: {e}"
    return problems
