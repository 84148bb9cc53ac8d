"""Folded totals are added sample by sample to counters and histograms, and nothing else."""

from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from archiver.metrics.folding import Folded, added, totals_of, with_folded


def families(completed: float, durations: list[float]):
    jobs = CounterMetricFamily("archiver_jobs", "jobs", labels=["outcome"])
    jobs.add_metric(["completed"], completed)
    histogram = HistogramMetricFamily("archiver_job_duration_seconds", "d", labels=["job_type"])
    buckets = [("10.0", sum(1 for d in durations if d <= 10)), ("+Inf", len(durations))]
    histogram.add_metric(["archive"], buckets, sum(durations))
    gauge = GaugeMetricFamily("archiver_jobs_in_progress", "g", value=3)
    return [jobs, histogram, gauge]


def test_folded_runs_and_history_add_up_to_the_counts_over_all_runs():
    old, new = [5.0, 50.0], [7.0]
    folded = totals_of(families(2, old))
    served = {s.name: s.value for family in with_folded(families(1, new), folded) for s in family.samples}
    everything = {s.name: s.value for family in families(3, old + new) for s in family.samples}
    assert served == everything


def test_totals_survive_their_round_trip_through_prefect():
    folded = Folded(datetime(2026, 12, 1, tzinfo=UTC), added({"a": 1.0}, {"a": 2.0, "b": 1.0}), {"end": 1.0})
    assert Folded.from_json(folded.to_json()) == folded
    assert folded.totals == {"a": 3.0, "b": 1.0}
