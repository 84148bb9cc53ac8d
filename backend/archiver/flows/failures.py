"""Which service an error that ended a dataset or a job came from, said in words operators and users read."""

from __future__ import annotations

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from archiver.clients.outage import PrefectUnavailable
from archiver.errors import is_system_fault
from archiver.packing.errors import IntegrityError
from archiver.scicat.client import ScicatError
from archiver.storage.lts import LtsWaitTimeout

PREFECT, S3, SCICAT, LTS = "Prefect API", "S3", "SciCat", "LTS"


def _service_of(error: BaseException) -> str | None:
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.v1._asyncio import ConcurrencySlotAcquisitionError as V1SlotError
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(error, ScicatError):
        return SCICAT
    if isinstance(error, (BotoCoreError, ClientError)):
        return S3
    if isinstance(error, (PrefectUnavailable, PrefectHTTPStatusError, ConcurrencySlotAcquisitionError, V1SlotError)):
        return PREFECT
    if isinstance(error, httpx.HTTPError):
        # SciCat calls raise ScicatError; a bare httpx error comes from Prefect's client.
        return PREFECT
    if isinstance(error, (IntegrityError, LtsWaitTimeout, OSError)):
        return LTS
    return None


def failing_service(error: BaseException) -> str | None:
    """ "Prefect API", "S3", "SciCat" or "LTS" for the error or the first error that caused it; None if unknown."""
    return next((service for e in _chain(error) if (service := _service_of(e)) is not None), None)


def describe_failure(error: BaseException) -> str:
    """E.g. "Prefect API unreachable (ConnectError: All connection attempts failed)"; an error that is no
    system fault (missing files, unsafe names, a full retrieval budget) is described as it is."""
    detail = f"{type(error).__name__}: {error}"
    if not is_system_fault(error):
        return detail
    source = next((e for e in _chain(error) if _service_of(e) is not None), None)
    if source is None:
        return detail
    service = _service_of(source)
    if source is not error:
        detail += f"; caused by {type(source).__name__}: {source}"
    unreachable = any(isinstance(e, (httpx.TransportError, PrefectUnavailable)) for e in _chain(error))
    if service == PREFECT and unreachable:
        return f"{PREFECT} unreachable ({detail})"
    if service == PREFECT and credentials_refused(source):
        return (
            f"{PREFECT} refused the credentials (HTTP 401): set PREFECT_API_AUTH_STRING_FILE to the file holding "
            "the server's 'user:password' (prefectauth.txt of the secrets folder)"
        )
    return f"{service} error ({detail})"


def credentials_refused(error: BaseException) -> bool:
    """Whether the error, or one that caused it, is a 401 from the Prefect API."""
    return any(isinstance(e, httpx.HTTPStatusError) and e.response.status_code == 401 for e in _chain(error))


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
