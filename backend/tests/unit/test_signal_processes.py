"""Signalling the processes a test listed: one that ended in between (a short-lived helper of Prefect's runner)
is skipped, not an error that leaves the others stopped."""

from __future__ import annotations

import signal
import subprocess
import sys

from archiver.local_services import signal_processes


def test_a_process_gone_since_it_was_listed_is_skipped_and_the_others_are_signalled():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert signal_processes([gone.pid, alive.pid], signal.SIGTERM) == [alive.pid]
        assert alive.wait(10) == -signal.SIGTERM
    finally:
        alive.kill()
        alive.wait()
