"""Failures of what the API endpoints depend on, as HTTP answers that say what to do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import HTTPException

from archiver.config.errors import ConfigError
from archiver.scicat.client import ScicatError


@contextmanager
def flows_settings_errors(feature: str) -> Iterator[None]:
    """Reading the flows' settings and accounts from Prefect failed: 503 saying what to do."""
    try:
        yield
    except HTTPException:
        raise
    except ConfigError as e:
        raise HTTPException(503, f"{feature} are not configured: {e}") from None
    except Exception as e:  # Prefect unreachable, a variable or secret block missing
        raise HTTPException(
            503,
            f"{feature} unavailable: the settings could not be read from Prefect "
            f"({e.__class__.__name__}: {str(e)[:200]}); run `archiver config`",
        ) from None


@contextmanager
def service_errors() -> Iterator[None]:
    """S3 and SciCat failures as 502 naming the service; nothing of the request is echoed."""
    try:
        yield
    except (BotoCoreError, ClientError) as e:
        raise HTTPException(502, f"S3 failed: {str(e)[:300]}") from None
    except ScicatError as e:
        raise HTTPException(502, str(e)[:500]) from None
