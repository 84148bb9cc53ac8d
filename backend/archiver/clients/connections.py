"""The clients one job run (and its dataset subflows) or an API request works with.

Settings are read once per job run (`load_run_configuration`) and handed to each dataset's subflow as a
parameter; credentials come from Prefect Secret blocks and never travel as parameters (parameters are
stored by Prefect).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from archiver.clients.outage import call_prefect
from archiver.config.runtime import RunConfiguration
from archiver.config.secrets import ARCHIVER_S3, LTS_S3, PRESIGN_S3, S3Account, read_secret_block
from archiver.config.settings import LtsSection
from archiver.packing.sources import Prefetch
from archiver.scicat.client import ScicatClient, ScicatCredentials
from archiver.storage.lts_store import LtsStore, open_store
from archiver.storage.s3 import S3Credentials, s3_client


@dataclass
class Connections:
    """Clients one job run and its dataset subflows work with; never passed as a Prefect parameter."""

    s3: Any  # the archiver account's client
    presign_credentials: S3Credentials  # sign download URLs only (read access to the retrieval bucket)
    scicat: ScicatClient
    s3_credentials: S3Credentials  # the archiver account's (the API signs upload URLs with it)


# The connections of the run being executed: its dataset subflows (same process, same configuration) use them
# instead of loading the secret blocks, making an S3 client and logging in to SciCat once more per dataset.
_OPEN: contextvars.ContextVar[tuple[RunConfiguration, Connections] | None] = contextvars.ContextVar(
    "archiver_connections", default=None
)


def _s3_pool_size(config: RunConfiguration) -> int:
    """Connections the S3 client may hold: every datablock worked on at once prefetches on its own threads."""
    archiver = config.settings.archiver
    return max(16, archiver.dataset_concurrency * archiver.datablock_concurrency * (Prefetch.threads + 1) + 4)


def _secret(name: str) -> str:
    return call_prefect(partial(read_secret_block, name), f"load secret block {name}")


def s3_account(account: S3Account) -> S3Credentials:
    """The account's keys from its Prefect Secret blocks."""
    return S3Credentials(_secret(account.user.prefect_block), _secret(account.password.prefect_block))


def open_lts(lts: LtsSection) -> LtsStore:
    """The LTS store LTS_BACKEND names; the cold S3 store signs with the LTS account of the Secret blocks
    lts-s3-user / lts-s3-password (`.secrets/ltss3user.txt`, `ltss3pass.txt`, seeded by `archiver config`)."""
    return open_store(lts, s3_account(LTS_S3) if lts.backend == "s3" else None)


def open_connections(config: RunConfiguration) -> Connections:
    """New clients for `config`; the caller closes `scicat` (flows use `connect`)."""
    minio = config.settings.s3
    scicat_credentials = ScicatCredentials(_secret("scicat-user"), _secret("scicat-password"))
    archiver_credentials = s3_account(ARCHIVER_S3)
    return Connections(
        s3=s3_client(minio.endpoint, minio.region, archiver_credentials, _s3_pool_size(config)),
        presign_credentials=s3_account(PRESIGN_S3),
        scicat=ScicatClient(config.settings.scicat, scicat_credentials),
        s3_credentials=archiver_credentials,
    )


@contextlib.contextmanager
def connect(config: RunConfiguration) -> Iterator[Connections]:
    """The clients for `config`: those of the enclosing run when it has the same configuration, else new ones,
    closed when the block ends."""
    outer = _OPEN.get()
    if outer is not None and outer[0] == config:
        yield outer[1]
        return
    connections = open_connections(config)
    token = _OPEN.set((config, connections))
    try:
        yield connections
    finally:
        _OPEN.reset(token)
        connections.scicat.close()
