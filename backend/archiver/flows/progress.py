"""A transfer's progress as a Prefect progress artifact, fed from worker threads."""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

_WITH_TOTAL = re.compile(r"^(?P<what>.*) \((?P<total>\d+) bytes\)$")


def described_with_total(what: str, total_bytes: int) -> str:
    """A progress artifact's description: what is counted, and the total a watcher shows bytes and rate of."""
    return f"{what} ({total_bytes} bytes)"


def what_and_total(description: str) -> tuple[str, int] | None:
    """`described_with_total` read back; None for a description it did not write."""
    match = _WITH_TOTAL.match(description)
    return (match["what"], int(match["total"])) if match else None


class PhasedCount:
    """Bytes counted per phase of a piece of work (an archival writes its datablocks, then verifies them). It is
    shown as the first phase not done, how far that phase is, and `shown_bytes` (the dataset's bytes, once) as
    the total (`described_with_total`)."""

    def __init__(self, what: str, shown_bytes: int, phases: dict[str, int] | None = None):
        """`phases`: each phase's name and the bytes it counts, in order; without, one phase of `shown_bytes`."""
        self._what = what
        self._shown = max(shown_bytes, 1)
        self._totals = phases if phases is not None else {"": shown_bytes}
        self._done = dict.fromkeys(self._totals, 0)

    def add(self, phase: str, n: int) -> None:
        self._done[phase] += n

    def phase(self) -> str:
        """The first phase with bytes still to count; the last one once all are done."""
        return next((p for p, total in self._totals.items() if self._done[p] < total), list(self._totals)[-1])

    def percent(self) -> float:
        phase = self.phase()
        return min(100.0, 100.0 * self._done[phase] / max(self._totals[phase], 1))

    def description(self) -> str:
        phase = self.phase()
        return described_with_total(f"{self._what}: {phase}" if phase else self._what, self._shown)


class ProgressReporter:
    """A Prefect progress artifact of a `PhasedCount` fed by byte counts from worker threads, updated at most
    every few seconds, so a watcher can show bytes, rate and time left.

    Updates are sent from a background thread, one at a time, so a slow or unreachable Prefect API
    never holds up the bytes (an update due while one is still being sent is skipped)."""

    def __init__(self, what: str, shown_bytes: int, phases: dict[str, int] | None = None, interval_s: float = 2.0):
        self._count = PhasedCount(what, shown_bytes, phases)
        self._lock = threading.Lock()
        self._interval_s = interval_s
        self._last_update = 0.0
        self._sending = False
        self._artifact_id: UUID | None = None
        try:
            # Prefect types the call as sync or async; in a flow run's thread it is sync.
            self._artifact_id = cast(
                UUID, create_progress_artifact(progress=0.0, description=self._count.description())
            )
        except Exception as e:  # progress is for humans; never fail a transfer over it
            get_run_logger().warning("progress artifact not created (Prefect API: %s); progress is not shown", e)

    def add(self, n: int) -> None:
        """Count `n` bytes of work without phases."""
        self._add("", n)

    def counter(self, phase: str) -> Callable[[int], None]:
        """The callable counting bytes of `phase`."""
        return partial(self._add, phase)

    def _add(self, phase: str, n: int) -> None:
        with self._lock:
            self._count.add(phase, n)
            now = time.monotonic()
            if now - self._last_update < self._interval_s:
                return
            self._last_update = now
            progress, description = self._count.percent(), self._count.description()
        self._update(progress, description)

    def finish(self, wait_s: float = 10.0) -> None:
        """Report 100 %, after the update being sent (if any) is through or `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        while self._sending and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            description = self._count.description()
        self._update(100.0, description)

    def _update(self, progress: float, description: str) -> None:
        with self._lock:
            artifact_id = self._artifact_id
            if artifact_id is None or self._sending:
                return
            self._sending = True
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._send, artifact_id, progress, description), daemon=True).start()

    def _send(self, artifact_id: UUID, progress: float, description: str) -> None:
        try:
            update_progress_artifact(artifact_id, progress=progress, description=description)
        except Exception as e:  # progress is for humans; never fail a transfer over it
            get_run_logger().debug("progress artifact not updated: %s", e)
        finally:
            with self._lock:
                self._sending = False
