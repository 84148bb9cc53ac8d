"""SciCat calls as Prefect tasks: visible in the UI and retried while SciCat is unreachable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from archiver.flows.task_states import exception_of
from archiver.scicat.client import ScicatError

R = TypeVar("R")


def scicat_may_recover(task, task_run, state) -> bool:
    """Retry SciCat calls only when SciCat was unreachable or unavailable, never on a 4xx answer."""
    error = exception_of(state)
    if isinstance(error, ScicatError):
        return error.status_code is None or error.status_code >= 500
    return isinstance(error, httpx.TransportError)


# SciCat tasks: retried while SciCat is unreachable or failing (about 2 minutes), never on its refusal.
SCICAT_RETRIES: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": [5, 15, 30, 60],
    "retry_condition_fn": scicat_may_recover,
    "cache_policy": NO_CACHE,
}


@task(name="report-to-scicat", task_run_name="scicat: {what}", **SCICAT_RETRIES)
def scicat_call(what: str, call: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """One SciCat call as a task: visible in the UI, retried while SciCat is down (the client retries briefly too)."""
    return call(*args, **kwargs)
