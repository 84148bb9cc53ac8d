"""LTS access in time slices: one Prefect task run holds a limit's slot for consecutive datablocks.

A task run per datablock costs two concurrency API calls and a handful of recorded states, and a slot
given back is taken by whoever asks next, so short tagged tasks serialize behind Prefect's Retry-After.
A stream instead runs its items (one dataset's datablocks) through slice task runs tagged with the
limit's tag: each takes the slot once, works through queued items for up to LTS_SLOT_SLICE_SECONDS,
then gives it back. A slice that used up its time is followed by a pause of YIELD_S before the stream
asks again, so a task waiting for the tag gets the slot within a slice (and the pause), costing a long
job YIELD_S / LTS_SLOT_SLICE_SECONDS of its writing time. The limit still means "at most N at once": every item runs
inside a task run holding the slot. Each item's outcome is logged, and a failed item fails its slice.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from archiver.clients.outage import call_prefect
from archiver.config.limits import TagLimit
from archiver.flows.cancellation import RunCancelled, RunNotOwned
from archiver.flows.task_states import exception_of

T = TypeVar("T")
R = TypeVar("R")

# A slice waits this long for its next item before giving the slot back (verifications arrive as writes end).
IDLE_S = 3.0
# Pause after a used-up slice before asking for the slot again: longer than a waiter's Retry-After
# (PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS, 1 s in our servers; Prefect draws up to 1.3 times
# it). Prefect shows no waiters (its limit counts denials but does not serve them), so the pause is unconditional.
YIELD_S = 2.0


@dataclass
class _Entry(Generic[T]):
    index: int
    item: T
    tries: int = 0
    not_before: float = 0.0


class LtsStream(Generic[T, R]):
    """Items worked on by `work` inside slice task runs tagged with `limit.tag`.

    `add` items before or during `run`; `close` once no more will come (a stream made with items is
    closed). An item whose error `may_retry` is tried again after `retry_delays[tries]`, the slot given
    back meanwhile. A RunCancelled or RunNotOwned, or an error `ends_stream`, stops the stream: items not
    started take that outcome."""

    def __init__(
        self,
        limit: TagLimit,
        describe: Callable[[T], str],
        work: Callable[[T], R],
        slice_s: float,
        slice_name: str,
        items: Sequence[T] | None = None,
        retry_delays: Sequence[float] = (),
        may_retry: Callable[[BaseException], bool] = lambda error: False,
        ends_stream: Callable[[BaseException], bool] = lambda error: False,
    ):
        self.limit = limit
        self._describe = describe
        self._work = work
        self._slice_s = slice_s
        self._slice_name = slice_name
        self._retry_delays = list(retry_delays)
        self._may_retry = may_retry
        self._ends_stream = ends_stream
        self._entries: deque[_Entry[T]] = deque()
        self._outcomes: dict[int, R | BaseException] = {}
        self._added = 0
        self._closed = False
        self._slices = 0
        self._started: set[int] = set()  # slices whose body ran
        self._used_up: set[int] = set()  # slices that ended because their time was up
        self._changed = threading.Condition()
        for item in items or ():
            self.add(item)
        if items is not None:
            self.close()

    def add(self, item: T) -> None:
        with self._changed:
            self._entries.append(_Entry(self._added, item))
            self._added += 1
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def run(self, workers: int) -> list[R | BaseException]:
        """Work through every item, at most `workers` slices at once (no more than the limit lets run);
        each item's result or error, in the order added."""
        workers = max(1, min(workers, self.limit.limit))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(contextvars.copy_context().run, self._serve) for _ in range(workers)]:
                future.result()
        return [self._outcomes[i] for i in range(self._added)]

    def _serve(self) -> None:
        slice_task = _lts_slice.with_options(tags=[self.limit.tag])
        previous = None
        while self._wait_until_ready():
            if previous in self._used_up:
                time.sleep(YIELD_S)
            with self._changed:
                self._slices += 1
                number = previous = self._slices
            name = f"{self._slice_name} (slice {number})"
            try:
                call_prefect(partial(self._run_slice, slice_task, name, number), f"take the LTS slot for {name}")
            except Exception as error:  # the slice never ran, and not for an outage we wait out: no item can
                self._stop(error)

    def _run_slice(self, slice_task, name: str, number: int) -> None:
        """Slice `number`, whatever its items' outcomes; raises what kept it from running (no slot, no API).
        A slot taken by a request whose answer was lost (a 500 after the server committed it) stays held
        until its lease expires, nobody renewing it: the limit is never exceeded, only a slot kept idle."""
        state = slice_task.with_options(task_run_name=name)(self, number, return_state=True)
        if number not in self._started:
            raise exception_of(state) or RuntimeError(f"{name} did not run ({state.name})")

    def _wait_until_ready(self) -> bool:
        """Whether an item is ready to be taken (waiting for a retry's time or a new item), or none will be."""
        with self._changed:
            return self._next_ready(None) is not None

    def _take(self, timeout_s: float) -> _Entry[T] | None:
        with self._changed:
            ready = self._next_ready(time.monotonic() + timeout_s)
            if ready is not None:
                self._entries.remove(ready)
            return ready

    def _next_ready(self, deadline: float | None) -> _Entry[T] | None:
        """The first entry ready to be taken, waiting for one (a retry's time, a new item) until `deadline`
        (None: as long as items may come); None once none will, or at the deadline. The caller holds the lock."""
        while True:
            now = time.monotonic()
            ready = next((entry for entry in self._entries if entry.not_before <= now), None)
            if ready is not None:
                return ready
            if (not self._entries and self._closed) or (deadline is not None and now >= deadline):
                return None
            waits = [entry.not_before - now for entry in self._entries]
            if deadline is not None:
                waits.append(deadline - now)
            self._changed.wait(min(waits) if waits else None)

    def _finish(self, entry: _Entry[T], outcome: R | BaseException) -> None:
        with self._changed:
            self._outcomes[entry.index] = outcome
            self._changed.notify_all()

    def _retry_later(self, entry: _Entry[T]) -> float:
        delay = self._retry_delays[entry.tries]
        with self._changed:
            entry.tries += 1
            entry.not_before = time.monotonic() + delay
            self._entries.append(entry)
            self._changed.notify_all()
        return delay

    def _stop(self, error: BaseException) -> None:
        with self._changed:
            while self._entries:
                self._outcomes[self._entries.popleft().index] = error
            self._closed = True
            self._changed.notify_all()

    def work_through_slice(self, number: int) -> int:
        """The body of one slice task run: items until the slice is used up, none is ready within IDLE_S,
        or one fails (raised, so the slice shows failed, naming it). Returns how many succeeded."""
        with self._changed:
            self._started.add(number)
        log = get_run_logger()
        started, done = time.monotonic(), 0
        while done == 0 or time.monotonic() - started < self._slice_s:
            entry = self._take(IDLE_S)
            if entry is None:
                break
            what = self._describe(entry.item)
            try:
                outcome = self._work(entry.item)
            except (RunCancelled, RunNotOwned) as stop:
                self._finish(entry, stop)
                self._stop(stop)
                raise
            except Exception as error:
                if entry.tries < len(self._retry_delays) and self._may_retry(error):
                    delay = self._retry_later(entry)
                    log.warning("%s failed (%s); tried again in %.0f s", what, error, delay)
                    continue
                self._finish(entry, error)
                log.error("%s failed: %s", what, error)
                if self._ends_stream(error):
                    self._stop(error)
                raise
            self._finish(entry, outcome)
            log.info("%s done", what)
            done += 1
        else:
            with self._changed:
                self._used_up.add(number)
        return done


@task(name="lts-slice", cache_policy=NO_CACHE)
def _lts_slice(stream: LtsStream, number: int) -> int:
    return stream.work_through_slice(number)
