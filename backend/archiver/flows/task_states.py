"""Reading Prefect task run states: retry conditions look at the exception a failed state holds."""

from __future__ import annotations


def exception_of(state) -> BaseException | None:
    """The exception a failed task run state holds (None if it holds none)."""
    try:
        state.result()
    except BaseException as e:
        return e
    return None
