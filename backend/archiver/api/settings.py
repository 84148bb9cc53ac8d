from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from archiver.api.runs import PrefectLimits
from archiver.config.deployments import ARCHIVAL, RETRIEVAL
from archiver.config.secrets import read_secret, secret_spec

_AUTH_SPEC = secret_spec("ARCHIVER_API_AUTH_FILE")


class ApiSettings(BaseSettings):
    """Read from the environment (the compose service's variables)."""

    root_path: str = Field("", validation_alias="API_ROOT_PATH")
    archival_deployment: str = Field(ARCHIVAL.deployment.full_name, validation_alias="ARCHIVAL_DEPLOYMENT")
    retrieval_deployment: str = Field(RETRIEVAL.deployment.full_name, validation_alias="RETRIEVAL_DEPLOYMENT")
    secrets_dir: Path = Field(Path(".secrets"), validation_alias="ARCHIVER_SECRETS_DIR")
    max_body_bytes: int = Field(1024 * 1024, gt=0, validation_alias="API_MAX_BODY_BYTES")
    max_datasets_per_job: int = Field(1000, gt=0, validation_alias="API_MAX_DATASETS_PER_JOB")
    prefect_max_retries: int = Field(2, ge=0, validation_alias="API_PREFECT_MAX_RETRIES")
    prefect_timeout_s: float = Field(30, gt=0, validation_alias="API_PREFECT_TIMEOUT_S")
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's forwarded_allow_ips: addresses or
    # networks, comma-separated); empty: nobody's, the peer address is the client address.
    forwarded_allow_ips: str = Field("", validation_alias="API_FORWARDED_ALLOW_IPS")
    # The upload endpoints read the flows' settings and accounts from Prefect and keep them this long.
    upload_settings_cache_s: float = Field(60, ge=0, validation_alias="API_UPLOAD_SETTINGS_CACHE_S")
    # /docs loads swagger-ui from a CDN: off unless asked for (development); /openapi.json is always served.
    docs_enabled: bool = Field(False, validation_alias="API_DOCS_ENABLED")

    @field_validator("root_path")
    @classmethod
    def _normalise_root(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError(f"API_ROOT_PATH must start with '/', got {value!r}")
        return value

    def prefect_limits(self) -> PrefectLimits:
        return PrefectLimits(self.prefect_max_retries, self.prefect_timeout_s)

    def deployments(self) -> dict[str, str]:
        """Job type -> Prefect deployment ('flow name/deployment name')."""
        return {ARCHIVAL.job_type: self.archival_deployment, RETRIEVAL.job_type: self.retrieval_deployment}

    def expected_authorization(self) -> str:
        """The exact Authorization header value SciCat must send (from ARCHIVER_API_AUTH_FILE)."""
        return read_secret(_AUTH_SPEC, self.secrets_dir)
