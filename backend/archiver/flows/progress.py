"""A transfer's progress as a Prefect progress artifact, fed from worker threads."""

from __future__ import annotations

import contextvars
import re
import threading
import time
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


class ProgressReporter:
    """A Prefect progress artifact fed by byte counts from worker threads, updated at most every few seconds.
    Its description carries the total (`described_with_total`), so a watcher can show bytes, rate and time left.

    Updates are sent from a background thread, one at a time, so a slow or unreachable Prefect API
    never holds up the bytes (an update due while one is still being sent is skipped)."""

    def __init__(self, total_bytes: int, description: str, interval_s: float = 2.0):
        self._total = max(total_bytes, 1)
        self._done = 0
        self._lock = threading.Lock()
        self._interval_s = interval_s
        self._last_update = 0.0
        self._sending = False
        self._artifact_id: UUID | None = None
        try:
            # Prefect types the call as sync or async; in a flow run's thread it is sync.
            self._artifact_id = cast(UUID, create_progress_artifact(
                progress=0.0, description=described_with_total(description, self._total)))
        except Exception as e:  # progress is for humans; never fail a transfer over it
            get_run_logger().warning("progress artifact not created (Prefect API: %s); progress is not shown", e)

    def add(self, n: int) -> None:
        with self._lock:
            self._done += n
            now = time.monotonic()
            if now - self._last_update < self._interval_s:
                return
            self._last_update = now
            progress = self.percent()
        self._update(progress)

    def percent(self) -> float:
        return min(100.0, 100.0 * self._done / self._total)

    def finish(self, wait_s: float = 10.0) -> None:
        """Report 100 %, after the update being sent (if any) is through or `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        while self._sending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._update(100.0)

    def _update(self, progress: float) -> None:
        with self._lock:
            artifact_id = self._artifact_id
            if artifact_id is None or self._sending:
                return
            self._sending = True
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._send, artifact_id, progress), daemon=True).start()

    def _send(self, artifact_id: UUID, progress: float) -> None:
        try:
            update_progress_artifact(artifact_id, progress=progress)
        except Exception as e:  # progress is for humans; never fail a transfer over it
            get_run_logger().debug("progress artifact not updated: %s", e)
        finally:
            with self._lock:
                self._sending = False
