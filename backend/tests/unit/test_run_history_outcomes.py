"""Counters never go back: a finished run's outcomes only grow, whatever happens to its state later."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from archiver.metrics.history import FinishedRun, _keeping_outcomes

ENDED = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
COMPLETED_RUN = FinishedRun(
    id=uuid4(),
    flow="archive_datasetlist",
    outcomes=("completed",),
    end=ENDED,
    state_at=ENDED,
    run_seconds=5.0,
    queue_wait_seconds=1.0,
    labels={},
)


def test_a_completed_run_forced_to_crashed_keeps_its_completion_counted():
    forced = replace(COMPLETED_RUN, outcomes=("crashed",), end=ENDED + timedelta(minutes=1))
    assert _keeping_outcomes(COMPLETED_RUN, forced).outcomes == ("completed", "crashed")


def test_a_run_retried_by_hand_takes_its_full_state_history():
    crashed = replace(COMPLETED_RUN, outcomes=("crashed",))
    retried = replace(COMPLETED_RUN, outcomes=("crashed", "completed"), end=ENDED + timedelta(minutes=5))
    assert _keeping_outcomes(crashed, retried) == retried
