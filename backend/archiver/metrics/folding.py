"""Counters that outlive Prefect's history: runs older than a horizon are folded into stored totals.

Prefect deletes finished flow runs once their end is older than its retention period, when its
database vacuum is told to (`PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED` with `flow_runs`, retention
`PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD`, default 90 days). Counters summed over the history
alone would then drop on the exporter's next start, and Prometheus would read the drop as a counter
reset (an `increase()` as large as the counter). So the exporter folds every run that ended before
`now - fold_after` into totals it keeps in Prefect (a block), and counts the rest from the
history: the totals hold exactly the runs that ended before their horizon. `fold_after` must stay
shorter than Prefect's retention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from prefect.blocks.core import Block
from prometheus_client.core import Metric

BLOCK_NAME = "archiver-metrics"
# Families whose samples are sums over runs; their folded totals are added to what the history gives.
SUMMED_TYPES = ("counter", "histogram")


@dataclass
class Folded:
    """Totals of the runs that ended before `horizon` (None: nothing folded yet), by sample; `last_audit` is
    the latest audit run among them (for the "last audit" gauges once it is no longer in the history)."""

    horizon: datetime | None = None
    totals: dict[str, float] = field(default_factory=dict)
    last_audit: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon.isoformat() if self.horizon else None,
            "totals": self.totals,
            "last_audit": self.last_audit,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Folded:
        horizon = value.get("horizon")
        return cls(
            datetime.fromisoformat(horizon) if horizon else None,
            {key: float(total) for key, total in (value.get("totals") or {}).items()},
            value.get("last_audit"),
        )


def sample_key(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"


def totals_of(families: list[Metric]) -> dict[str, float]:
    """The summed samples of `families`, by sample key."""
    summed = [family for family in families if family.type in SUMMED_TYPES]
    return {sample_key(s.name, s.labels): s.value for family in summed for s in family.samples}


def added(totals: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    return {key: totals.get(key, 0.0) + more.get(key, 0.0) for key in totals.keys() | more.keys()}


def with_folded(families: list[Metric], totals: dict[str, float]) -> list[Metric]:
    """`families` with the folded totals added to their summed samples."""
    for family in families:
        if family.type in SUMMED_TYPES:
            family.samples = [
                s._replace(value=s.value + totals.get(sample_key(s.name, s.labels), 0.0)) for s in family.samples
            ]
    return families


class ArchiverFoldedMetrics(Block):
    """The metrics exporter's totals of flow runs older than its horizon (docs/monitoring.md): delete it and
    the counters start again from the runs Prefect still holds."""

    _block_type_name = "Archiver folded metrics"
    _block_type_slug = "archiver-folded-metrics"
    value: dict[str, Any] = {}


def load() -> Folded:
    try:
        block = cast(ArchiverFoldedMetrics, ArchiverFoldedMetrics.load(BLOCK_NAME))
    except ValueError:  # no such block yet: nothing folded
        return Folded()
    return Folded.from_json(block.value)


def save(folded: Folded) -> None:
    ArchiverFoldedMetrics(value=folded.to_json()).save(BLOCK_NAME, overwrite=True)
