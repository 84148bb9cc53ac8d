from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from archiver.config.secrets import read_secret, secret_spec

_AUTH_SPEC = secret_spec("ARCHIVER_API_AUTH_FILE")


class ApiSettings(BaseSettings):
    """Read from the environment (the compose service's variables)."""

    root_path: str = Field("", validation_alias="API_ROOT_PATH")
    archival_deployment: str = Field(
        "archive_datasetlist/datasets_archival", validation_alias="ARCHIVAL_DEPLOYMENT"
    )
    retrieval_deployment: str = Field(
        "retrieve_datasetlist/datasets_retrieval", validation_alias="RETRIEVAL_DEPLOYMENT"
    )
    secrets_dir: Path = Field(Path(".secrets"), validation_alias="ARCHIVER_SECRETS_DIR")

    @field_validator("root_path")
    @classmethod
    def _normalise_root(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError(f"API_ROOT_PATH must start with '/', got {value!r}")
        return value

    def deployments(self) -> dict[str, str]:
        """Job type -> Prefect deployment ('flow name/deployment name')."""
        return {"archive": self.archival_deployment, "retrieve": self.retrieval_deployment}

    def expected_authorization(self) -> str:
        """The exact Authorization header value SciCat must send (from ARCHIVER_API_AUTH_FILE)."""
        return read_secret(_AUTH_SPEC, self.secrets_dir)
