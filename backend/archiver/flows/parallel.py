"""Applying a function to many items at once, bounded, inside the current Prefect run context."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


def run_bounded(function: Callable[[T], R], items: Iterable[T], max_workers: int) -> list[R | BaseException]:
    """Apply `function` to each item, at most `max_workers` at once, inside the current Prefect run context.

    Returns each item's result or the exception it raised, in the order of `items`."""
    items = list(items)
    if not items:
        return []

    def run(item: T) -> R | BaseException:
        try:
            return function(item)
        except Exception as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items)))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, run, item) for item in items]
        return [future.result() for future in futures]


def raise_first_error(outcomes: Iterable[R | BaseException]) -> list[R]:
    """The results, or the first error among the outcomes raised."""
    results: list[R] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


def run_alongside(main: Callable[[], R], beside: Callable[[], S], then: Callable[[], None]) -> tuple[R, S]:
    """`beside` in another thread (inside the current Prefect run context) while `main` runs here; `then()`
    once `main` has ended, whatever its outcome (say, telling `beside` no more work will come)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(contextvars.copy_context().run, beside)
        try:
            first = main()
        finally:
            then()
        return first, future.result()
