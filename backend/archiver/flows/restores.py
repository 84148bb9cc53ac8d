"""Where each datablock of a retrieval is on its way back from the LTS: waiting, restore requested, ready, read.

A cold store restores datablocks before they can be read (hours on an archive class), a tape HSM recalls them.
The dataset run shows each datablock's state in a table artifact (key `datablocks-retrieved-<pid>`, a new
version whenever states changed, at most every few seconds) and records on itself how many datablocks wait for
a restore, which the metrics exporter sums over the retrieval runs in progress.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from archiver.flows.artifact_keys import artifact_key
from archiver.flows.figures import RESTORES_ASKED, RESTORES_WAITING, record_figures
from archiver.storage.lts import ReadState

READ = "read"  # the datablock's bytes (or the selected files of it) are in the retrieval bucket, checked
STATES = (*(str(state) for state in ReadState), READ)


class DatablockStates:
    """Each datablock's state, shown as a table artifact of the current run, sent at most every `interval_s`
    (and by `flush`). Fed from the store's restore wait (`heard`) and from the upload workers (`read`)."""

    def __init__(self, pid: str, archive_ids: list[str], interval_s: float = 2.0):
        self._pid = pid
        self._states: dict[str, str] = dict.fromkeys(archive_ids, str(ReadState.WAITING))
        self._asked: set[str] = set()
        self._interval_s = interval_s
        self._sent_at = self._figures_at = 0.0
        self._unsent = True
        self._figures_sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def heard(self, states: dict[str, ReadState]) -> None:
        """States from `LtsStore.wait_until_all_readable`. The counts of datablocks waiting and of restores
        asked are recorded as figures when they changed, at most every `interval_s` until none waits."""
        with self._lock:
            for archive_id, state in states.items():
                if self._states.get(archive_id) != READ:
                    self._states[archive_id] = str(state)
                if state is ReadState.RESTORE_REQUESTED:
                    self._asked.add(archive_id)
            waiting = sum(1 for state in self._states.values() if state not in (ReadState.READY, READ))
            figures = {RESTORES_WAITING: waiting, RESTORES_ASKED: len(self._asked)}
            now = time.monotonic()
            due = figures != self._figures_sent and (not waiting or now - self._figures_at >= self._interval_s)
            if due:
                self._figures_sent, self._figures_at = figures, now
            self._unsent = True
        if due:
            record_figures(figures, wait=True)  # in order: a later count never overtaken by an earlier one
        self._send_if_due()

    def read(self, archive_id: str) -> None:
        with self._lock:
            self._states[archive_id] = READ
            self._unsent = True
        self._send_if_due()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, int]:
        found = Counter(self._states.values())
        return {state: found[state] for state in STATES}

    def flush(self) -> None:
        """Send the states now if they changed since last sent."""
        self._send_if_due(force=True)

    def _send_if_due(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._unsent or (not force and now - self._sent_at < self._interval_s):
                return
            self._sent_at, self._unsent = now, False
            rows = [{"datablock": archive_id, "state": state} for archive_id, state in self._states.items()]
            summary = ", ".join(f"{n} {state}" for state, n in self._counts().items() if n)
        try:
            create_table_artifact(
                rows,
                key=artifact_key("datablocks-retrieved", self._pid),
                description=f"Datablocks of {self._pid} on their way back from the LTS: {summary}",
            )
        except Exception as e:  # progress is for humans; never fail a retrieval over it
            get_run_logger().warning("%s: datablock states not shown (Prefect API: %s)", self._pid, e)
