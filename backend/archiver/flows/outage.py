"""Riding out a Prefect API outage (a server restart, a few minutes of downtime) inside a flow run.

Prefect's HTTP client retries failed requests `PREFECT_CLIENT_MAX_RETRIES` times with
exponential backoff (2, 4, 8, ... s, 20 % jitter). Two gaps remain in Prefect 3.9.1, and
both failed archive jobs during a `docker compose restart prefect-server`:

- `httpx.ConnectError` ("All connection attempts failed") is retried only by a client that has
  already had an answer. Prefect makes fresh clients for the concurrency-slot release after
  every tagged task, for lease renewals and for block loads, so the first refused connection
  of such a client raised at once. `retry_refused_connections` makes every client in this
  process retry it: the API URL of a flow run is known to be right (the run was started by it).
- Calls of our own that must not give up after the client's retries (`call_prefect`).

With `FLOW_RUN_ENVIRONMENT` (set by `archiver serve` and the Docker job templates) the
client retries 7 times: about 4 minutes of downtime ridden out per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

R = TypeVar("R")

# Retries 2 + 4 + ... + 128 s: one request waits out about 4 minutes of API downtime.
FLOW_RUN_ENVIRONMENT = {"PREFECT_CLIENT_MAX_RETRIES": "7"}


class PrefectUnavailable(Exception):
    """The Prefect API stayed unreachable (or answered 5xx) longer than we wait for it."""


def retry_refused_connections() -> None:
    """Make Prefect's HTTP clients in this process retry refused connections from their first request."""
    from prefect.client import base

    for cls in (base.PrefectHttpxAsyncClient, base.PrefectHttpxSyncClient):
        if getattr(cls, "_archiver_retries_refused", False):
            continue
        original_init = cls.__init__
        if "_has_connected" not in original_init.__code__.co_names:
            # The private flag this relies on is gone: fail loudly at import, not silently mid-outage.
            raise RuntimeError(f"{cls.__qualname__} no longer has _has_connected; revisit archiver.flows.outage")

        def __init__(self, *args, _original=original_init, **kwargs):
            _original(self, *args, **kwargs)
            self._has_connected = True

        cls.__init__ = __init__
        cls._archiver_retries_refused = True


def is_prefect_outage(error: BaseException) -> bool:
    """A transport error or a 5xx answer from the Prefect API (not a 4xx: that is a real refusal)."""
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, (PrefectHTTPStatusError, httpx.HTTPStatusError)):
        return error.response.status_code >= 500
    return False


def call_prefect(
    call: Callable[[], R], what: str, max_wait_s: float = 300, *,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> R:
    """`call()`, repeated while the Prefect API is unreachable, for at most `max_wait_s`;
    then PrefectUnavailable names what could not be done."""
    deadline = clock() + max_wait_s
    interval = 2.0
    while True:
        try:
            return call()
        except Exception as e:
            if not is_prefect_outage(e):
                raise
            remaining = deadline - clock()
            if remaining <= 0:
                raise PrefectUnavailable(
                    f"Prefect API unreachable for more than {max_wait_s:g}s: could not {what} "
                    f"({type(e).__name__}: {e})"
                ) from e
            sleep(min(interval, remaining))
            interval = min(interval * 2, 30.0)
