"""The Prometheus collector: every value computed at scrape time from Prefect, the LTS folder and the retrieval bucket.

Counters and histograms are sums over Prefect's flow-run history (`history.RunHistory`), so they never
go back to zero when the exporter restarts. Each source that cannot be read is reported by
`archiver_metrics_source_up{source=...} 0` and its series are left out of that scrape (an absent series
is not a wrong value). docs/monitoring.md describes every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from archiver.clients.connections import open_lts
from archiver.config.deployments import AUDIT, JOB_KINDS, RETRIEVAL
from archiver.flows.figures import AUDIT_PROBLEMS, BYTES, RESTORES_ASKED, RESTORES_WAITING, figure
from archiver.metrics import folding, live
from archiver.metrics.history import FinishedRun, RunHistory

log = logging.getLogger(__name__)

JOB_FLOWS = {kind.deployment.flow: kind.job_type for kind in JOB_KINDS.values()}
DATASET_FLOWS = {kind.dataset_flow: kind.job_type for kind in JOB_KINDS.values()}
AUDIT_FLOW = AUDIT.flow
OUTCOMES = ("completed", "failed", "crashed", "cancelled")
JOB_TYPES = tuple(JOB_KINDS)
DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
QUEUE_WAIT_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600)
SOURCES = ("prefect", "lts", "s3")
DEFAULT_FOLD_AFTER = timedelta(days=7)


class SlowReads:
    """Results of reads too slow for every scrape (LTS walk, bucket listing), kept `ttl_s` seconds."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self._clock = ttl_s, clock
        self._kept: dict[str, tuple[float, object]] = {}

    def get(self, key: str, read: Callable[[], object]):
        at, value = self._kept.get(key, (None, None))
        if at is None or self._clock() - at > self.ttl_s:
            value = read()
            self._kept[key] = (self._clock(), value)
        return value


def _histogram(name: str, doc: str, buckets: tuple, values_by_type: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["job_type"])
    for job_type in JOB_TYPES:
        values = values_by_type.get(job_type, [])
        cumulative = [(str(float(bound)), sum(1 for v in values if v <= bound)) for bound in buckets]
        family.add_metric([job_type], cumulative + [("+Inf", len(values))], sum(values))
    return family


class ArchiverCollector(Collector):
    """`settings()` gives the current Settings and ConcurrencyLimits (Prefect variables, environment on top);
    `s3()` an S3 client of the archiver's account."""

    def __init__(
        self,
        load_configuration: Callable,
        s3: Callable,
        slow_ttl_s: float = 60.0,
        fold_after: timedelta = DEFAULT_FOLD_AFTER,
    ):
        self._load_configuration = load_configuration
        self._s3 = s3
        self._slow = SlowReads(slow_ttl_s)
        self._history = RunHistory([*JOB_FLOWS, *DATASET_FLOWS, AUDIT_FLOW])
        self._fold_after = fold_after
        self._folded: folding.Folded | None = None  # read from Prefect at the first scrape
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # names are fixed; no collection at registration

    def collect(self) -> Iterable[Metric]:
        with self._lock:  # one scrape at a time: the history is refreshed in place
            families: list[Metric] = []
            up = {source: 1 for source in SOURCES}
            try:
                config = self._load_configuration()
            except Exception as e:
                log.warning("settings not read from Prefect: %s", e)
                config, up = None, {source: 0 for source in SOURCES}
            if config is not None:
                for source, gather in (("prefect", self._prefect), ("lts", self._lts), ("s3", self._bucket)):
                    try:
                        families += gather(config)
                    except Exception as e:
                        log.warning("%s not read: %s: %s", source, type(e).__name__, e)
                        up[source] = 0
            source_up = GaugeMetricFamily(
                "archiver_metrics_source_up",
                "1 when the exporter could read this source at this scrape",
                labels=["source"],
            )
            for source, value in up.items():
                source_up.add_metric([source], value)
            return [*families, source_up]

    # --- Prefect ---------------------------------------------------------------------------------

    def _prefect(self, config) -> list[Metric]:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            if self._folded is None:
                self._adopt(folding.load())
            self._history.refresh(client)
            unfinished = live.unfinished_runs(client, [*JOB_FLOWS, *DATASET_FLOWS, AUDIT_FLOW], self._history.flow_name)
            slots = [live.tag_slots(client, limit.tag) for limit in config.limits.by_name().values()]
        folded = self._fold_due()
        runs = self._history.runs()
        return [
            *folding.with_folded(self._summed_families(runs), folded.totals),
            self._in_progress(unfinished),
            self._waiting_for_restores(unfinished),
            self._stuck(unfinished, config.settings.archiver.zombie_window_s),
            *self._slot_families([s for s in slots if s is not None]),
            *self._last_audit(runs, folded.last_audit),
        ]

    def _adopt(self, folded: folding.Folded) -> None:
        """Count from `folded` on: the history holds the runs from its horizon on (read again from Prefect)."""
        self._folded = folded
        self._history.start_at(folded.horizon)

    def _fold_due(self) -> folding.Folded:
        """Fold the runs that ended before `now - fold_after` into the stored totals, at most once per step."""
        assert self._folded is not None
        horizon = datetime.now(UTC) - self._fold_after
        step = min(timedelta(hours=1), self._fold_after)
        if self._folded.horizon is not None and horizon - self._folded.horizon < step:
            return self._folded
        stored = folding.load()
        if stored.horizon != self._folded.horizon:  # another exporter folded meanwhile: count from its totals
            self._adopt(stored)
            return stored
        old = self._history.runs_before(horizon)
        audits = sorted((r for r in old if r.flow == AUDIT_FLOW), key=lambda r: r.end)
        folded = folding.Folded(
            horizon,
            folding.added(self._folded.totals, folding.totals_of(self._summed_families(old))),
            _audit_record(audits[-1]) if audits else self._folded.last_audit,
        )
        folding.save(folded)
        self._folded = folded
        self._history.forget_before(horizon)
        return folded

    @classmethod
    def _summed_families(cls, runs: list[FinishedRun]) -> list[Metric]:
        """The counters and histograms: sums over finished runs."""
        return [*cls._job_families(runs), *cls._dataset_families(runs), cls._audit_counts(runs)]

    @staticmethod
    def _in_progress(unfinished: list[live.UnfinishedRun]) -> Metric:
        in_progress = GaugeMetricFamily(
            "archiver_jobs_in_progress", "Job runs not finished yet, by state", labels=["job_type", "state"]
        )
        states = Counter((JOB_FLOWS[u.flow], u.state) for u in unfinished if u.flow in JOB_FLOWS)
        for job_type in JOB_TYPES:
            for state in live.UNFINISHED_STATES:
                in_progress.add_metric([job_type, state.lower()], states[(job_type, state.lower())])
        return in_progress

    @staticmethod
    def _waiting_for_restores(unfinished: list[live.UnfinishedRun]) -> Metric:
        return GaugeMetricFamily(
            "archiver_datablocks_waiting_for_restore",
            "Datablocks that retrieval runs in progress wait for the LTS to restore (cold store) or recall (tape)",
            value=sum(figure(u.labels, RESTORES_WAITING) for u in unfinished if u.flow == RETRIEVAL.dataset_flow),
        )

    @staticmethod
    def _job_families(runs: list[FinishedRun]) -> list[Metric]:
        jobs = [r for r in runs if r.flow in JOB_FLOWS]
        outcomes = Counter((JOB_FLOWS[r.flow], outcome) for r in jobs for outcome in r.outcomes)
        total = CounterMetricFamily(
            "archiver_jobs",
            "Job runs (archival, retrieval) that ended, by outcome (final state)",
            labels=["job_type", "outcome"],
        )
        for job_type in JOB_TYPES:
            for outcome in OUTCOMES:  # every series exists from the start, so the first failure is an increase
                total.add_metric([job_type, outcome], outcomes[(job_type, outcome)])
        durations: dict[str, list[float]] = {}
        waits: dict[str, list[float]] = {}
        for run in jobs:
            durations.setdefault(JOB_FLOWS[run.flow], []).append(run.run_seconds)
            if run.queue_wait_seconds is not None:
                waits.setdefault(JOB_FLOWS[run.flow], []).append(run.queue_wait_seconds)
        return [
            total,
            _histogram(
                "archiver_job_duration_seconds", "Time finished job runs spent running", DURATION_BUCKETS, durations
            ),
            _histogram(
                "archiver_job_queue_wait_seconds",
                "Time from a job run's scheduled start to its start (worker pick-up, container start)",
                QUEUE_WAIT_BUCKETS,
                waits,
            ),
        ]

    @staticmethod
    def _dataset_families(runs: list[FinishedRun]) -> list[Metric]:
        datasets = [r for r in runs if r.flow in DATASET_FLOWS]
        outcomes = Counter((DATASET_FLOWS[r.flow], outcome) for r in datasets for outcome in r.outcomes)
        total = CounterMetricFamily(
            "archiver_datasets",
            "Datasets archived or retrieved (dataset runs), by outcome",
            labels=["job_type", "outcome"],
        )
        moved = CounterMetricFamily(
            "archiver_dataset_bytes",
            "Bytes of the files of datasets archived to / retrieved from the LTS",
            labels=["job_type"],
        )
        for job_type in JOB_TYPES:
            for outcome in OUTCOMES:
                total.add_metric([job_type, outcome], outcomes[(job_type, outcome)])
            moved.add_metric(
                [job_type],
                sum(
                    figure(r.labels, BYTES)
                    for r in datasets
                    if DATASET_FLOWS[r.flow] == job_type and r.outcome == "completed"
                ),
            )
        restored = CounterMetricFamily(
            "archiver_datablock_restores",
            "Datablocks retrieval runs that ended had to wait for a restore of (asked by them or by another reader)",
        )
        restored.add_metric(
            [], sum(figure(r.labels, RESTORES_ASKED) for r in datasets if r.flow == RETRIEVAL.dataset_flow)
        )
        return [total, moved, restored]

    @staticmethod
    def _stuck(unfinished: list[live.UnfinishedRun], window_s: int) -> Metric:
        now = live.utc_now()
        stuck = Counter(u.flow for u in unfinished if live.is_stuck(u, window_s, now))
        family = GaugeMetricFamily(
            "archiver_flow_runs_stuck",
            f"Running flow runs whose latest heartbeat is older than ARCHIVER_ZOMBIE_WINDOW_S ({window_s} s)",
            labels=["flow"],
        )
        for flow in [*JOB_FLOWS, *DATASET_FLOWS, AUDIT_FLOW]:
            family.add_metric([flow], stuck[flow])
        return family

    @staticmethod
    def _slot_families(slots: list[live.TagSlots]) -> list[Metric]:
        limit = GaugeMetricFamily(
            "archiver_concurrency_slots_limit", "Slots of a tag concurrency limit", labels=["tag"]
        )
        held = GaugeMetricFamily(
            "archiver_concurrency_slots_held", "Slots of a tag limit counted as taken", labels=["tag"]
        )
        dead = GaugeMetricFamily(
            "archiver_concurrency_slots_dead",
            "Slots counted as taken whose holder task run is gone or finished",
            labels=["tag"],
        )
        for s in slots:
            limit.add_metric([s.tag], s.limit)
            held.add_metric([s.tag], s.held)
            dead.add_metric([s.tag], s.dead)
        return [limit, held, dead]

    @staticmethod
    def _audit_counts(runs: list[FinishedRun]) -> Metric:
        total = CounterMetricFamily("archiver_lts_audits", "LTS audit runs that ended, by outcome", labels=["outcome"])
        outcomes = Counter(outcome for r in runs if r.flow == AUDIT_FLOW for outcome in r.outcomes)
        for outcome in OUTCOMES:
            total.add_metric([outcome], outcomes[outcome])
        return total

    @staticmethod
    def _last_audit(runs: list[FinishedRun], folded: dict | None) -> list[Metric]:
        """Gauges of the latest audit run: in the history, or else the latest one folded."""
        audits = sorted((r for r in runs if r.flow == AUDIT_FLOW), key=lambda r: r.end)
        last = _audit_record(audits[-1]) if audits else folded
        if last is None:
            return []
        return [
            GaugeMetricFamily(
                "archiver_lts_audit_last_end_timestamp_seconds",
                "When the latest LTS audit run ended (Unix time)",
                value=last["end"],
            ),
            GaugeMetricFamily(
                "archiver_lts_audit_last_success",
                "1 when the latest LTS audit run completed",
                value=int(last["outcome"] == "completed"),
            ),
            GaugeMetricFamily(
                "archiver_lts_audit_last_problems", "Problems the latest LTS audit run found", value=last["problems"]
            ),
        ]

    # --- LTS and S3 ---------------------------------------------------------------------------------

    def _lts(self, config) -> list[Metric]:
        lts = config.settings.lts
        store = open_lts(lts)
        failing = self._slow.get("audit-records", lambda: live.datablocks_failing_audit(store))
        return [
            *(self._lts_space(lts.storage_root) if store.space_is_limited else []),  # none in a bucket
            GaugeMetricFamily(
                "archiver_lts_free_space_threshold_ratio",
                "LTS_FREE_SPACE_PERCENTAGE / 100: below it archival waits for free space",
                value=lts.free_space_percentage / 100,
            ),
            GaugeMetricFamily(
                "archiver_lts_datablocks_failing_audit",
                "Datablocks whose latest audit record on the LTS says the audit failed",
                value=failing,
            ),
        ]

    @staticmethod
    def _lts_space(root) -> list[Metric]:
        space = live.lts_space(root)
        return [
            GaugeMetricFamily("archiver_lts_size_bytes", "Size of the LTS filesystem", value=space.size_bytes),
            GaugeMetricFamily("archiver_lts_free_bytes", "Free bytes on the LTS filesystem", value=space.free_bytes),
            GaugeMetricFamily(
                "archiver_lts_free_ratio",
                "Free share of the LTS filesystem (0-1)",
                value=space.free_bytes / space.size_bytes if space.size_bytes else 0.0,
            ),
        ]

    def _bucket(self, config) -> list[Metric]:
        bucket = config.settings.s3.retrieval_bucket
        usage = self._slow.get("retrieval-bucket", lambda: live.bucket_usage(self._s3(config), bucket))
        return [
            GaugeMetricFamily(
                "archiver_retrieval_bucket_bytes", "Bytes of the objects in the retrieval bucket", value=usage.bytes
            ),
            GaugeMetricFamily(
                "archiver_retrieval_bucket_objects", "Objects in the retrieval bucket", value=usage.objects
            ),
        ]


def _audit_record(run: FinishedRun) -> dict:
    return {"end": run.end.timestamp(), "outcome": run.outcome, "problems": figure(run.labels, AUDIT_PROBLEMS)}
