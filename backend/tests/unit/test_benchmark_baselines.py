"""The data path benchmark's parallel raw download has as many GETs in flight as the engine (its targets compare
the two), and its verdicts say met only at or above a target."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import baselines  # beside the benchmarks, not a package

from archiver.packing.sources import Prefetch

MiB = 1024 * 1024
PREFETCH = Prefetch(threads=8, budget_bytes=32 * MiB, small_object_bytes=4 * MiB)


@pytest.mark.parametrize(
    ("file_size", "datablocks", "expected"),
    [
        (64 * MiB, 3, 2),  # streamed one at a time by each of the 2 datablocks written at once
        (4 * MiB + 1, 3, 2),
        (4 * MiB, 3, 16),  # fetched ahead on 8 threads by each datablock
        (64 * 1024, 7, 16),
        (1 * MiB, 1, 8),  # a dataset of one datablock has one writer
        (64 * MiB, 1, 1),
    ],
)
def test_gets_in_flight_follow_the_engines_prefetch_and_datablock_concurrency(file_size, datablocks, expected):
    assert baselines.engine_gets_in_flight(file_size, datablocks, 2, PREFETCH) == expected


def test_verdicts():
    assert baselines.verdict(1.0, 1.0) == "met"
    assert baselines.verdict(0.99, 1.0) == "not met"
    assert baselines.verdict(0.5, None) == "no target"
