from datetime import UTC, datetime, timedelta

from archiver.timeline import Phase, covered_seconds, format_phases

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_overlapping_tasks_count_once_and_gaps_not_at_all():
    intervals = [(at(0), at(2)), (at(1), at(3)), (at(5), at(6)), (at(5.5), at(5.7))]
    assert covered_seconds(intervals) == 4.0


def test_no_tasks_cover_nothing():
    assert covered_seconds([]) == 0.0


def test_the_report_adds_the_phases_up():
    lines = format_phases("job", [Phase("a", 1.25), Phase("b", 2.5)])
    assert lines[0] == "job"
    assert lines[-1].endswith("3.75 s")
