"""A service of a test's own that the test kills and starts again, as a crashed or restarted container."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

from archiver.local_services import RunningService


class Restartable:
    """`opened()` starts the service (on the same port and state each time) as a context manager."""

    def __init__(self, opened: Callable[[], contextlib.AbstractContextManager[RunningService]]):
        self._opened = opened
        self._stack = None

    def start(self) -> None:
        self._stack = contextlib.ExitStack()
        service = self._stack.enter_context(self._opened())
        self.process, self.log_path = service.process, service.log_path

    def kill(self) -> None:
        """SIGKILL, as a crashed or restarted container: no graceful shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.stop()

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
