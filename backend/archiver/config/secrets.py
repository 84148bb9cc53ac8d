"""Secret files in `.secrets/` and the Prefect Secret blocks made from them.

Each secret is one file. In the compose stack the files are mounted as compose
secrets and their paths given by `*_FILE` environment variables; locally the
same names are looked up in the secrets folder. Values are never printed.
"""

from __future__ import annotations

import os
import secrets as random
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from archiver.config.errors import ConfigError

DEFAULT_SECRETS_DIR = Path(".secrets")


@dataclass(frozen=True)
class SecretSpec:
    file_env: str  # environment variable naming the file, e.g. MINIO_USER_FILE
    filename: str  # file name in .secrets/
    block: str | None  # Prefect Secret block seeded from it (None: not a Prefect secret)
    purpose: str
    is_username: bool = False

    @property
    def prefect_block(self) -> str:
        """The Secret block's name, for a spec of PREFECT_SECRETS (ValueError for another)."""
        if self.block is None:
            raise ValueError(f"{self.filename} is not stored in a Prefect Secret block")
        return self.block


PREFECT_AUTH_FILE_ENV = "PREFECT_API_AUTH_STRING_FILE"  # Prefect reads no file: see load_prefect_auth

SECRETS: tuple[SecretSpec, ...] = (
    SecretSpec("POSTGRES_USER_FILE", "postgresuser.txt", None, "PostgreSQL user of the Prefect server", True),
    SecretSpec("POSTGRES_PASSWORD_FILE", "postgrespass.txt", None, "PostgreSQL password of the Prefect server"),
    SecretSpec(
        "MINIO_USER_FILE", "miniouser.txt", None, "MinIO root user (`archiver config` creates buckets with it)", True
    ),
    SecretSpec("MINIO_PASSWORD_FILE", "miniopass.txt", None, "MinIO root password"),
    SecretSpec("S3_ARCHIVER_USER_FILE", "s3archiveruser.txt", "s3-archiver-user", "S3 access key of the flows", True),
    SecretSpec("S3_ARCHIVER_PASSWORD_FILE", "s3archiverpass.txt", "s3-archiver-password", "S3 secret key of the flows"),
    SecretSpec(
        "S3_PRESIGN_USER_FILE", "s3presignuser.txt", "s3-presign-user", "S3 access key signing download URLs", True
    ),
    SecretSpec(
        "S3_PRESIGN_PASSWORD_FILE", "s3presignpass.txt", "s3-presign-password", "S3 secret key signing download URLs"
    ),
    SecretSpec(
        "LTS_S3_USER_FILE",
        "ltss3user.txt",
        "lts-s3-user",
        'S3 access key of the flows on the LTS bucket (LTS_BACKEND "s3")',
        True,
    ),
    SecretSpec(
        "LTS_S3_PASSWORD_FILE", "ltss3pass.txt", "lts-s3-password", "S3 secret key of the flows on the LTS bucket"
    ),
    SecretSpec("SCICAT_USER_FILE", "scicatuser.txt", "scicat-user", "SciCat account the archiver logs in with", True),
    SecretSpec("SCICAT_PASSWORD_FILE", "scicatpass.txt", "scicat-password", "password of that SciCat account"),
    SecretSpec(
        "ARCHIVER_API_AUTH_FILE",
        "archiverapiauth.txt",
        None,
        "Authorization header value SciCat sends to the archiver API (e.g. 'Bearer <token>')",
    ),
    SecretSpec(
        "ARCHIVER_UPLOAD_ACCOUNTS_FILE",
        "uploadaccounts.txt",
        None,
        "service accounts of automated ingestors for the archiver API's uploads, one 'name:token:group,group' a line",
    ),
    SecretSpec(
        PREFECT_AUTH_FILE_ENV,
        "prefectauth.txt",
        None,
        "'user:password' the Prefect server requires of every client and of the UI's login",
    ),
    SecretSpec(
        "REDIS_PASSWORD_FILE",
        "redispass.txt",
        None,
        "password of Redis in the `ha` profile (requirepass), required of the Prefect server containers",
    ),
)

PREFECT_SECRETS = tuple(spec for spec in SECRETS if spec.block)


def read_secret_block(name: str) -> str:
    """The value of Prefect Secret block `name` (ValueError when there is no such block)."""
    from prefect.blocks.system import Secret

    # Prefect types load() as either sync or async; outside an event loop it is sync.
    block = cast(Secret, Secret.load(name))
    return block.get()


# Blocks of earlier versions, which gave the flows MinIO's root account; `archiver config` deletes them.
OBSOLETE_SECRET_BLOCKS = ("minio-user", "minio-password")


def load_prefect_auth(environ=None) -> None:
    """Set PREFECT_API_AUTH_STRING from the file PREFECT_API_AUTH_STRING_FILE names (unless it is set).

    Prefect reads its settings from the environment when it is imported: call this before."""
    environ = os.environ if environ is None else environ
    if environ.get("PREFECT_API_AUTH_STRING") or not environ.get(PREFECT_AUTH_FILE_ENV):
        return
    environ["PREFECT_API_AUTH_STRING"] = read_secret(secret_spec(PREFECT_AUTH_FILE_ENV), environ=environ)


def secret_spec(file_env: str) -> SecretSpec:
    """The secret whose file is named by the environment variable `file_env`."""
    for spec in SECRETS:
        if spec.file_env == file_env:
            return spec
    raise KeyError(f"no secret is named by {file_env}; known: {', '.join(s.file_env for s in SECRETS)}")


@dataclass(frozen=True)
class S3Account:
    """An S3 account as a pair of secrets; its policy is backend/docker/s3-policies/{name}.json."""

    name: str
    user: SecretSpec
    password: SecretSpec

    @property
    def files(self) -> str:
        return f"{self.user.filename} / {self.password.filename}"


MINIO_ROOT = S3Account("root", secret_spec("MINIO_USER_FILE"), secret_spec("MINIO_PASSWORD_FILE"))
ARCHIVER_S3 = S3Account("archiver", secret_spec("S3_ARCHIVER_USER_FILE"), secret_spec("S3_ARCHIVER_PASSWORD_FILE"))
PRESIGN_S3 = S3Account("presign", secret_spec("S3_PRESIGN_USER_FILE"), secret_spec("S3_PRESIGN_PASSWORD_FILE"))
LTS_S3 = S3Account("lts", secret_spec("LTS_S3_USER_FILE"), secret_spec("LTS_S3_PASSWORD_FILE"))


def secret_path(spec: SecretSpec, secrets_dir: Path = DEFAULT_SECRETS_DIR, environ=None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(spec.file_env) or secrets_dir / spec.filename)


def read_secret(spec: SecretSpec, secrets_dir: Path = DEFAULT_SECRETS_DIR, environ=None) -> str:
    path = secret_path(spec, secrets_dir, environ)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"secret file {path} ({spec.file_env}, {spec.purpose}) is missing; create it or run `archiver secrets init`"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"secret file {path} ({spec.file_env}) is not readable: {e.__class__.__name__}") from None
    if not value:
        raise ConfigError(f"secret file {path} ({spec.file_env}, {spec.purpose}) is empty")
    return value


def init_secrets(secrets_dir: Path = DEFAULT_SECRETS_DIR) -> list[Path]:
    """Create every missing secret file with a random value; existing files are left alone."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    created = []
    for spec in SECRETS:
        path = secrets_dir / spec.filename
        if path.exists():
            continue
        if spec.is_username:
            value = "archiver-" + random.token_hex(4)
        elif spec.file_env == "ARCHIVER_API_AUTH_FILE":
            value = "Bearer " + random.token_urlsafe(32)
        elif spec.file_env == "ARCHIVER_UPLOAD_ACCOUNTS_FILE":
            value = (
                "# name:token:group,group (one service account a line; no groups: it may upload nothing)\n"
                "ingestor:" + random.token_urlsafe(32) + ":"
            )
        elif spec.file_env == PREFECT_AUTH_FILE_ENV:
            value = "archiver:" + random.token_urlsafe(24)
        else:
            value = random.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        created.append(path)
    return created
