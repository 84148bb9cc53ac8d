"""What a flow run reads once at its start: settings and concurrency limits, from Prefect variables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from archiver.config.limits import LIMITS_VARIABLE, ConcurrencyLimits, from_variable
from archiver.config.settings import Settings, from_prefect_variables


class RunConfiguration(BaseModel):
    """Serialisable (no secrets), so a flow can hand it to its subflows as a parameter."""

    model_config = ConfigDict(frozen=True)

    settings: Settings
    limits: ConcurrencyLimits


def load_run_configuration(environ: dict[str, str] | None = None) -> RunConfiguration:
    """All Prefect variables in one API call; environment variables override settings."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        stored = {v.name: v.value for v in client.read_variables()}
    return RunConfiguration(
        settings=from_prefect_variables(stored, environ),
        limits=from_variable(stored.get(LIMITS_VARIABLE)),
    )
