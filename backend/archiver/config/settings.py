"""Typed settings: the variables of `prefect-vars.toml`, validated in one model.

The same model is filled from the TOML file (by `archiver config`), from
Prefect variables (once per flow run) and from environment variables, which
override either source. Every key keeps the name users know from the file; in
Prefect the variable is the key in lower case.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from archiver.config.errors import ConfigError, explain

MAX_PRESIGNED_URL_SECONDS = 7 * 24 * 3600
# Prefect refuses flow-run heartbeats more often than every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY >= 30).
MINIMUM_HEARTBEAT_S = 30


def _http_url(value: str) -> str:
    TypeAdapter(AnyHttpUrl).validate_python(value)
    return value.rstrip("/")


def _file_mode(value: str) -> str:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{value!r} is not a file mode in octal digits, e.g. '0440' (read-only for owner and group)")
    return value


def _cron(value: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=value)
    except ValidationError:
        raise ValueError(
            f"{value!r} is not a cron schedule of five fields, e.g. '0 2 * * *' (daily at 02:00 UTC)"
        ) from None
    return value


# Kept as written (without a trailing slash) so the stored variable matches the file.
HttpUrl = Annotated[str, AfterValidator(_http_url)]
# S3 storage classes a datablock may be written in: the archive classes must be restored before a read
# (GLACIER, DEEP_ARCHIVE), the others are read at once.
ColdStorageClass = Literal["DEEP_ARCHIVE", "GLACIER", "GLACIER_IR", "STANDARD_IA", "STANDARD"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ArchiverSection(_Section):
    scratch_folder: Path = Field(alias="ARCHIVER_SCRATCH_FOLDER")
    target_size_mb: PositiveInt = Field(alias="ARCHIVER_TARGET_SIZE_MB")
    checksum_algorithm: Literal["sha256", "md5"] = Field("sha256", alias="ARCHIVER_CHECKSUM_ALGORITHM")
    dataset_concurrency: PositiveInt = Field(2, alias="ARCHIVER_DATASET_CONCURRENCY")
    datablock_concurrency: PositiveInt = Field(2, alias="ARCHIVER_DATABLOCK_CONCURRENCY")
    # Crash detection and recovery (docs/flows.md, "When a run crashes").
    crash_retries: NonNegativeInt = Field(2, alias="ARCHIVER_CRASH_RETRIES")
    heartbeat_s: int = Field(30, alias="ARCHIVER_HEARTBEAT_S", ge=MINIMUM_HEARTBEAT_S)
    zombie_window_s: int = Field(90, alias="ARCHIVER_ZOMBIE_WINDOW_S")
    dataset_lock_wait_s: NonNegativeFloat = Field(900, alias="ARCHIVER_DATASET_LOCK_WAIT_S")

    @model_validator(mode="after")
    def _window_longer_than_heartbeat(self) -> ArchiverSection:
        if self.zombie_window_s <= self.heartbeat_s:
            raise ValueError(
                f"ARCHIVER_ZOMBIE_WINDOW_S ({self.zombie_window_s}) must be longer than ARCHIVER_HEARTBEAT_S "
                f"({self.heartbeat_s}), or live runs are marked crashed; use about three heartbeats"
            )
        return self

    @property
    def target_size_bytes(self) -> int:
        return self.target_size_mb * 1024 * 1024


class LtsSection(_Section):
    # What holds the datablocks (storage/lts_store.py, `open_store`): "posix", a filesystem mounted at the root;
    # "s3", a bucket whose datablocks are written in a cold storage class and restored before they are read.
    backend: Literal["posix", "s3"] = Field("posix", alias="LTS_BACKEND")
    storage_root: Path = Field(alias="LTS_STORAGE_ROOT")
    free_space_percentage: float = Field(alias="LTS_FREE_SPACE_PERCENTAGE", ge=0, lt=100)
    free_space_timeout_s: float = Field(3600, alias="LTS_FREE_SPACE_TIMEOUT_S", gt=0)
    file_timeout_s: float = Field(600, alias="LTS_FILE_TIMEOUT_S", gt=0)
    # How long one task run keeps an LTS limit's slot across consecutive datablocks (flows/lts_slices.py).
    slot_slice_s: float = Field(60, alias="LTS_SLOT_SLICE_SECONDS", gt=0)
    discarded_retention_days: PositiveInt = Field(30, alias="LTS_DISCARDED_RETENTION_DAYS")
    # The `lts_audit` deployment (docs/flows.md, "Auditing the LTS").
    audit_cron: Annotated[str, AfterValidator(_cron)] = Field("0 2 * * *", alias="LTS_AUDIT_CRON")
    audit_budget_mb: PositiveInt = Field(500_000, alias="LTS_AUDIT_BUDGET_MB")
    # LTS_BACKEND "s3": the audit checks S3's checksums of every datablock and re-reads (restores) at most this much.
    audit_restore_budget_mb: NonNegativeInt = Field(10_000, alias="LTS_AUDIT_RESTORE_BUDGET_MB")
    audit_period_days: PositiveInt = Field(90, alias="LTS_AUDIT_PERIOD_DAYS")
    audit_partial_age_hours: float = Field(48, alias="LTS_AUDIT_PARTIAL_AGE_HOURS", gt=0)
    # Owner and mode of the datablocks and manifests written to the LTS; unset: the flow-run process's.
    file_uid: NonNegativeInt | None = Field(None, alias="LTS_FILE_UID")
    file_gid: NonNegativeInt | None = Field(None, alias="LTS_FILE_GID")
    file_mode: Annotated[str, AfterValidator(_file_mode)] | None = Field(None, alias="LTS_FILE_MODE")
    # LTS_BACKEND "s3" (storage/s3_store.py): where, in which storage class, and how datablocks are restored.
    s3_endpoint: HttpUrl | None = Field(None, alias="LTS_S3_ENDPOINT")
    s3_region: str = Field("us-east-1", alias="LTS_S3_REGION", min_length=1)
    s3_bucket: str | None = Field(None, alias="LTS_S3_BUCKET", min_length=3)
    s3_prefix: str = Field("", alias="LTS_S3_PREFIX")
    storage_class: ColdStorageClass = Field("DEEP_ARCHIVE", alias="LTS_STORAGE_CLASS")
    restore_tier: Literal["Expedited", "Standard", "Bulk"] = Field("Bulk", alias="LTS_RESTORE_TIER")
    restore_days: PositiveInt = Field(3, alias="LTS_RESTORE_DAYS")
    restore_timeout_hours: float = Field(48, alias="LTS_RESTORE_TIMEOUT_HOURS", gt=0)

    @model_validator(mode="after")
    def _s3_store_complete(self) -> LtsSection:
        if self.backend == "s3" and (self.s3_endpoint is None or self.s3_bucket is None):
            raise ValueError(
                'LTS_BACKEND "s3" needs LTS_S3_ENDPOINT and LTS_S3_BUCKET (where the datablocks are written)'
            )
        if self.storage_class == "DEEP_ARCHIVE" and self.restore_tier == "Expedited":
            raise ValueError(
                'LTS_RESTORE_TIER "Expedited" is not offered for LTS_STORAGE_CLASS "DEEP_ARCHIVE" (S3 restores it '
                'with "Standard" or "Bulk" only); choose one of those'
            )
        return self

    @property
    def restore_timeout_s(self) -> float:
        return self.restore_timeout_hours * 3600

    @property
    def audit_budget_bytes(self) -> int:
        return self.audit_budget_mb * 1024 * 1024

    @property
    def file_mode_bits(self) -> int | None:
        return None if self.file_mode is None else int(self.file_mode, 8)


class S3Section(_Section):
    """Any S3 service (MinIO, SeaweedFS, AWS): its endpoints and the archiver's two buckets."""

    region: str = Field(alias="S3_REGION", min_length=1)
    retrieval_bucket: str = Field(alias="S3_RETRIEVAL_BUCKET", min_length=3)
    landingzone_bucket: str = Field(alias="S3_LANDINGZONE_BUCKET", min_length=3)
    # Accepted so existing files load; the streaming data path has no staging copy.
    staging_bucket: str | None = Field(None, alias="S3_STAGING_BUCKET")
    endpoint: HttpUrl = Field(alias="S3_ENDPOINT")
    external_endpoint: HttpUrl = Field(alias="S3_EXTERNAL_ENDPOINT")
    url_expiration_s: int = Field(
        MAX_PRESIGNED_URL_SECONDS,
        alias="S3_URL_EXPIRATION_S",
        gt=0,
        le=MAX_PRESIGNED_URL_SECONDS,
    )
    abort_incomplete_uploads_days: PositiveInt = Field(1, alias="S3_ABORT_INCOMPLETE_UPLOADS_DAYS")
    # Retrieved copies: kept this long after the last retrieval that asked for them (docs/flows.md, "Retrieved copies").
    retrieval_retention_days: float = Field(14, alias="S3_RETRIEVAL_RETENTION_DAYS", gt=0)
    # Most GiB the retrieval bucket may hold; a retrieval that would pass it fails (0: no limit).
    retrieval_budget_gb: float = Field(0, alias="S3_RETRIEVAL_BUDGET_GB", ge=0)
    # How long a retrieval waits for another run retrieving (or cleaning up) the same dataset.
    retrieval_wait_s: float = Field(6 * 3600, alias="S3_RETRIEVAL_WAIT_S", ge=0)

    @property
    def retrieval_budget_bytes(self) -> int | None:
        return int(self.retrieval_budget_gb * 1024**3) or None


def _api_version(prefix: str) -> str | None:
    """'v3' for '/api/v3/' (also behind a path such as '/scicat/api/v3'), None when it names no version."""
    parts = prefix.strip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == "api" and parts[-1] in ("v3", "v4") else None


class ScicatSection(_Section):
    endpoint: HttpUrl = Field(alias="SCICAT_ENDPOINT")
    api_prefix: str = Field("/api/v3/", alias="SCICAT_API_PREFIX")
    jobs_api_prefix: str = Field("/api/v3/", alias="SCICAT_JOBS_API_PREFIX")
    job_status_schema: Literal["v3", "v4"] = Field("v3", alias="SCICAT_JOB_STATUS_SCHEMA")
    lifecycle_merge_endpoint: bool = Field(False, alias="SCICAT_LIFECYCLE_MERGE_ENDPOINT")

    @model_validator(mode="after")
    def _versions_fit(self) -> ScicatSection:
        # SciCat v4 serves only jobs under /api/v4; datasets and datablocks stay under /api/v3.
        if _api_version(self.api_prefix) != "v3":
            raise ValueError(
                f"SCICAT_API_PREFIX {self.api_prefix!r} must end in /api/v3/: SciCat serves login, datasets and "
                "datablocks only under /api/v3 (also on SciCat v4)"
            )
        jobs_version = _api_version(self.jobs_api_prefix)
        if jobs_version is None:
            raise ValueError(f"SCICAT_JOBS_API_PREFIX {self.jobs_api_prefix!r} must end in /api/v3/ or /api/v4/")
        if jobs_version != self.job_status_schema:
            raise ValueError(
                f"SCICAT_JOB_STATUS_SCHEMA {self.job_status_schema!r} does not fit SCICAT_JOBS_API_PREFIX "
                f"{self.jobs_api_prefix!r}: jobs under /api/{jobs_version}/ take only {jobs_version} status updates "
                f"(set SCICAT_JOB_STATUS_SCHEMA = {jobs_version!r}, or change the prefix)"
            )
        return self


class UploadSection(_Section):
    """Uploads through the archiver API's presigned multipart URLs (docs/api.md, "Uploads")."""

    landingzone_budget_gb: float = Field(0, alias="UPLOAD_LANDINGZONE_BUDGET_GB", ge=0)
    part_size_mb: int = Field(64, alias="UPLOAD_PART_SIZE_MB", ge=5, le=5 * 1024)
    url_expiration_s: int = Field(24 * 3600, alias="UPLOAD_URL_EXPIRATION_S", gt=0, le=MAX_PRESIGNED_URL_SECONDS)
    urls_per_answer: PositiveInt = Field(1000, alias="UPLOAD_URLS_PER_ANSWER")
    abort_incomplete_days: PositiveInt = Field(7, alias="UPLOAD_ABORT_INCOMPLETE_DAYS")

    @property
    def budget_bytes(self) -> int | None:
        """None: no budget."""
        return int(self.landingzone_budget_gb * 10**9) or None


class Settings(_Section):
    archiver: ArchiverSection
    lts: LtsSection
    s3: S3Section
    scicat: ScicatSection
    upload: UploadSection = UploadSection()


SECTIONS: dict[str, type[_Section]] = {
    name: cast(type[_Section], field.annotation) for name, field in Settings.model_fields.items()
}


def section_keys(section: type[_Section]) -> list[str]:
    """The keys of prefect-vars.toml a section reads: its fields' aliases."""
    return [field.alias for field in section.model_fields.values() if field.alias]


def known_keys() -> dict[str, str]:
    """Every key of prefect-vars.toml, mapped to its section."""
    return {key: section for section, model in SECTIONS.items() for key in section_keys(model)}


# The S3 section was [minio] with MINIO_* keys, named after the first S3 server used. Files, Prefect variables
# and environments written then are still read; where a key is set under both names, the S3 name wins.
LEGACY_SECTIONS = {"minio": "s3"}
LEGACY_KEYS = {f"MINIO_{key.removeprefix('S3_')}": key for key in section_keys(S3Section)}


def with_current_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """KEY -> value with legacy keys under their current names."""
    current = {LEGACY_KEYS[key]: value for key, value in values.items() if key in LEGACY_KEYS}
    current.update((key, value) for key, value in values.items() if key not in LEGACY_KEYS)
    return current


def with_current_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    """prefect-vars.toml's sections with legacy sections and keys under their current names."""
    current: dict[str, Any] = {}
    for name, section in data.items():
        if name in LEGACY_SECTIONS and isinstance(section, dict):
            current[LEGACY_SECTIONS[name]] = {**section, **current.get(LEGACY_SECTIONS[name], {})}
        elif isinstance(section, dict):
            current[name] = {**current.get(name, {}), **section}
        else:
            current[name] = section
    return {
        name: with_current_keys(section) if isinstance(section, dict) else section for name, section in current.items()
    }


def variable_name(key: str) -> str:
    """The Prefect variable that holds a key (Prefect allows only lower case)."""
    return key.lower()


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: not readable as TOML: {e}") from None


def load_vars_file(path: Path) -> Settings:
    """Settings from prefect-vars.toml; every problem names file, section and key."""
    return validate(read_toml(path), source=str(path))


def flat_values(settings: Settings) -> dict[str, Any]:
    """KEY -> JSON-compatible value, as stored in Prefect variables."""
    dumped = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: value for section in dumped.values() for key, value in section.items()}


def from_flat(values: dict[str, Any], source: str) -> Settings:
    """Settings from KEY -> value pairs (Prefect variables, environment), sections inferred."""
    sections = known_keys()
    data: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in with_current_keys(values).items():
        if key in sections:
            data[sections[key]][key] = value
    return validate(data, source=source)


def from_prefect_variables(stored: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Settings from Prefect variables (name -> value, as read in one call), environment on top."""
    keys = [*LEGACY_KEYS, *known_keys()]
    values = with_current_keys({key: stored[variable_name(key)] for key in keys if variable_name(key) in stored})
    values.update(environment_overrides(environ))
    return from_flat(values, source="Prefect variables (prefect-vars.toml) and environment")


def environment_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Keys of prefect-vars.toml set in the environment; an empty value counts as unset
    (compose passes a variable left empty in .env as an empty string)."""
    environ = os.environ if environ is None else environ
    return with_current_keys({key: environ[key] for key in [*LEGACY_KEYS, *known_keys()] if environ.get(key)})


def with_environment_overrides(settings: Settings, environ: Mapping[str, str], source: str) -> Settings:
    """`settings` with the keys set in `environ` replaced (validated like the file)."""
    overrides = environment_overrides(environ)
    if not overrides:
        return settings
    return from_flat(
        {**flat_values(settings), **overrides}, source=f"{source} and environment ({', '.join(overrides)})"
    )


def validate(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(with_current_sections(data))
    except ValidationError as e:
        raise explain(e, source, _expected_keys) from None


def _expected_keys(parent: Sequence) -> list[str]:
    if not parent:
        return [f"[{name}]" for name in SECTIONS]
    return section_keys(SECTIONS[parent[0]])
