"""Tag concurrency limits of `concurrency-limits.toml`: which Prefect tag guards which LTS access."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from archiver.config.errors import ConfigError, explain
from archiver.config.settings import read_toml


class TagLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tag: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    limit: NonNegativeInt


class ConcurrencyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    LTS_FREE_LIMIT: TagLimit
    MOVE_TO_LTS_LIMIT: TagLimit
    VERIFY_LTS_LIMIT: TagLimit
    LTS_TO_RETRIEVAL_LIMIT: TagLimit

    def by_name(self) -> dict[str, TagLimit]:
        return {name: getattr(self, name) for name in type(self).model_fields}


# The whole file is also stored in this Prefect variable, so flows learn the tags without the file.
LIMITS_VARIABLE = "concurrency_limits"


def from_variable(value: Any) -> ConcurrencyLimits:
    if value is None:
        raise ConfigError(f"Prefect variable {LIMITS_VARIABLE!r} is missing; run `archiver config` (prefect-config)")
    try:
        return ConcurrencyLimits.model_validate(value)
    except ValidationError as e:
        raise explain(e, f"Prefect variable {LIMITS_VARIABLE!r}", _expected_keys) from None


def load_limits_file(path: Path) -> ConcurrencyLimits:
    data = read_toml(path)
    try:
        return ConcurrencyLimits.model_validate(data)
    except ValidationError as e:
        raise explain(e, str(path), _expected_keys) from None


def _expected_keys(parent: Sequence) -> list[str]:
    return list(ConcurrencyLimits.model_fields) if not parent else list(TagLimit.model_fields)
