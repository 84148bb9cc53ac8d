"""Riding out a Prefect API outage (a server restart, a few minutes of downtime) inside a flow run.

Prefect's HTTP client retries failed requests `PREFECT_CLIENT_MAX_RETRIES` times with
exponential backoff (2, 4, 8, ... s, 20 % jitter). Two gaps remain in Prefect 3.9.1, and
both failed archive jobs during a `docker compose restart prefect-server`:

- `httpx.ConnectError` ("All connection attempts failed") is retried only by a client that has
  already had an answer. Prefect makes fresh clients for the concurrency-slot release after
  every tagged task, for lease renewals and for block loads, so the first refused connection
  of such a client raised at once. `retry_refused_connections` makes every client in this
  process retry it: the API URL of a flow run is known to be right (the run was started by it).
- While the server's database restarts, every request answers 500 (the server lives, its queries
  fail), which the client does not retry: a job failed on its concurrency-slot release 15 s into a
  10 s PostgreSQL restart. `retry_refused_connections` also makes the client retry a 500 for
  requests that are safe to repeat (`safe_to_repeat`: reads, filters, slot releases, lease
  renewals); a 500 to anything else still fails at once.
- Calls of our own that must not give up after the client's retries (`call_prefect`).

With `FLOW_RUN_ENVIRONMENT` (set by `archiver serve` and the Docker job templates) the
client retries 7 times: about 4 minutes of downtime ridden out per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from archiver.errors import ArchiverError

R = TypeVar("R")

# Retries 2 + 4 + ... + 128 s: one request waits out about 4 minutes of API downtime.
FLOW_RUN_ENVIRONMENT = {"PREFECT_CLIENT_MAX_RETRIES": "7"}


class PrefectUnavailable(ArchiverError):
    """The Prefect API stayed unreachable (or answered 5xx) longer than we wait for it."""


# POSTs that only read, or give back what the caller holds: repeating them changes nothing.
_SAFE_POST_SUFFIXES = ("/filter", "/count", "/paginate", "/decrement-with-lease", "/renew")


def safe_to_repeat(request: httpx.Request) -> bool:
    """A Prefect API request whose repetition cannot do anything twice."""
    return request.method in ("GET", "HEAD") or (
        request.method == "POST" and request.url.path.rstrip("/").endswith(_SAFE_POST_SUFFIXES)
    )


def retry_refused_connections() -> None:
    """Make Prefect's HTTP clients in this process retry refused connections from their first request, and a
    500 answer to requests that are safe to repeat (the database behind the server restarting)."""
    from prefect.client import base

    for cls in (base.PrefectHttpxAsyncClient, base.PrefectHttpxSyncClient):
        if getattr(cls, "_archiver_retries_refused", False):
            continue
        original_init = cls.__init__
        if "_has_connected" not in original_init.__code__.co_names:
            # The private flag this relies on is gone: fail loudly at import, not silently mid-outage.
            raise RuntimeError(f"{cls.__qualname__} no longer has _has_connected; revisit archiver.clients.outage")

        def __init__(self, *args, _original=original_init, **kwargs):
            _original(self, *args, **kwargs)
            self._has_connected = True

        def _send_with_retry(self, request, *args, retry_codes=frozenset(), _original=cls._send_with_retry, **kwargs):
            if safe_to_repeat(request):
                retry_codes = {*retry_codes, 500}
            return _original(self, request, *args, retry_codes=retry_codes, **kwargs)

        cls.__init__ = __init__  # type: ignore[method-assign]
        cls._send_with_retry = _send_with_retry  # type: ignore[method-assign]
        cls._archiver_retries_refused = True  # type: ignore[union-attr]


def is_prefect_outage(error: BaseException) -> bool:
    """A transport error or a 5xx answer from the Prefect API (not a 4xx: that is a real refusal), also when it
    is why a concurrency slot could not be taken."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(error, ConcurrencySlotAcquisitionError) and error.__cause__ is not None:
        return is_prefect_outage(error.__cause__)
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, (PrefectHTTPStatusError, httpx.HTTPStatusError)):
        return error.response.status_code >= 500
    return False


def call_prefect(
    call: Callable[[], R],
    what: str,
    max_wait_s: float = 300,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
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
                    f"Prefect API unreachable for more than {max_wait_s:g}s: could not {what} ({type(e).__name__}: {e})"
                ) from e
            sleep(min(interval, remaining))
            interval = min(interval * 2, 30.0)
