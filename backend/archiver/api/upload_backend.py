"""What the upload endpoints work with: the flows' settings and accounts, read from Prefect, kept for a minute.

The settings (landing-zone bucket, S3 endpoints, SciCat, the `[upload]` keys) and the archiver's S3 and
SciCat accounts are the ones `archiver config` seeds for the flows, so uploads land exactly where archival
reads. They are read again after CACHE_SECONDS, so a changed setting takes effect without a restart."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archiver.api.errors import flows_settings_errors
from archiver.api.upload_access import ServiceAccount, load_service_accounts
from archiver.config.settings import Settings
from archiver.scicat.client import ScicatClient
from archiver.storage.s3 import s3_client

CACHE_SECONDS = 60.0


@dataclass
class UploadBackend:
    settings: Settings
    s3: Any  # the archiver account on the internal endpoint: creates, lists, completes, aborts
    signer: Any  # the same account on the external endpoint: signs part URLs uploaders can reach
    scicat: ScicatClient  # the archiver's SciCat account: reads datasets, marks them archivable, creates jobs
    service_accounts: list[ServiceAccount]

    @property
    def bucket(self) -> str:
        return self.settings.s3.landingzone_bucket


def connect_backend(secrets_dir: Path) -> UploadBackend:
    from archiver.clients.connections import open_connections
    from archiver.config.runtime import load_run_configuration

    config = load_run_configuration()
    connections = open_connections(config)
    minio = config.settings.s3
    return UploadBackend(
        settings=config.settings,
        s3=connections.s3,
        signer=s3_client(minio.external_endpoint, minio.region, connections.s3_credentials),
        scicat=connections.scicat,
        service_accounts=load_service_accounts(secrets_dir),
    )


class CachedBackend:
    def __init__(self, secrets_dir: Path, max_age_s: float = CACHE_SECONDS):
        self._secrets_dir = secrets_dir
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._backend: UploadBackend | None = None
        self._loaded_at = 0.0

    def get(self) -> UploadBackend:
        with self._lock:
            if self._backend is None or time.monotonic() - self._loaded_at > self._max_age_s:
                with flows_settings_errors("uploads"):
                    backend = connect_backend(self._secrets_dir)
                if self._backend is not None:
                    self._backend.scicat.close()
                self._backend, self._loaded_at = backend, time.monotonic()
            return self._backend
