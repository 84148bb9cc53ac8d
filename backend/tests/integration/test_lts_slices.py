"""LtsStream (flows/lts_slices.py) on a real Prefect server: slices hold a tag's slot, items keep their order,
storage hiccups are tried again with the slot given back, and a full LTS or a run that must stop ends it."""

from __future__ import annotations

import errno
import time
from datetime import UTC, datetime

import pytest
from prefect import flow

from archiver import local_services
from archiver.config.limits import TagLimit
from archiver.flows.cancellation import RunNotOwned
from archiver.flows.lts_slices import LtsStream
from archiver.storage import lts
from tests.integration.own_prefect import prefect_api
from tests.integration.task_history import most_at_once, tagged_task_runs_since

pytestmark = pytest.mark.integration


@pytest.fixture
def limit(prefect_api_url, unique_name) -> TagLimit:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(unique_name, 1)
    return TagLimit(tag=unique_name, limit=1)


def streamed(limit: TagLimit, items, work, slice_s: float = 60, workers: int = 2, **options) -> list:
    @flow(name="stream-items")
    def stream_items():
        return LtsStream(limit, lambda item: f"item {item}", work, slice_s, "items", items=items, **options).run(
            workers
        )

    return stream_items()


def test_items_run_in_slices_that_hold_the_slot_and_keep_their_order(limit):
    since = datetime.now(UTC)
    outcomes = streamed(limit, list(range(6)), lambda i: time.sleep(0.3) or i * 10, slice_s=0.5)
    assert outcomes == [0, 10, 20, 30, 40, 50]
    slices = tagged_task_runs_since(limit.tag, "items (slice", since)
    # 0.3 s items in 0.5 s slices: two items a slice, so three slices, one at a time whatever `workers` says.
    assert len(slices) == 3 and all(s.state.is_completed() for s in slices), [s.name for s in slices]
    assert most_at_once([(s.start_time, s.end_time) for s in slices]) == 1


def test_a_storage_hiccup_is_tried_again_later_and_other_items_go_on(limit):
    tries: dict[int, int] = {}

    def work(i):
        tries[i] = tries.get(i, 0) + 1
        if i == 1 and tries[i] == 1:
            raise ConnectionError("S3 went away")
        return i

    outcomes = streamed(limit, [0, 1, 2], work, retry_delays=[0.5], may_retry=lambda e: True)
    assert outcomes == [0, 1, 2] and tries == {0: 1, 1: 2, 2: 1}


def test_an_error_that_ends_the_stream_is_the_outcome_of_every_item_not_started(limit):
    started = []

    def work(i):
        started.append(i)
        if i == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return i

    outcomes = streamed(limit, [0, 1, 2, 3], work, workers=1, ends_stream=lts.is_full)
    assert started == [0, 1] and outcomes[0] == 0
    assert all(isinstance(o, OSError) and o.errno == errno.ENOSPC for o in outcomes[1:]), outcomes


def test_a_run_that_must_stop_stops_the_stream(limit):
    def work(i):
        if i == 0:
            raise RunNotOwned("handed on")
        return i

    outcomes = streamed(limit, [0, 1, 2], work, workers=1, may_retry=lambda e: True, retry_delays=[0.1])
    assert all(isinstance(o, RunNotOwned) for o in outcomes), outcomes


def test_items_added_while_it_runs_are_worked_on_until_closed(limit):
    stream = LtsStream(limit, str, lambda i: i + 1, 60, "open items")

    @flow(name="open-stream")
    def open_stream():
        from archiver.flows.parallel import run_alongside

        def feed():
            for i in range(3):
                time.sleep(0.2)
                stream.add(i)

        return run_alongside(feed, lambda: stream.run(1), then=stream.close)[1]

    assert open_stream() == [1, 2, 3]


def test_a_slice_denied_its_slot_while_prefect_s_database_is_down_asks_again_once_it_is_back(own_prefect, unique_name):
    """PostgreSQL restarting under the Prefect server: the server answers 500 to a slot acquisition. The stream
    must wait for the database, not end the dataset's writing with that answer."""
    from prefect.client.orchestration import get_client

    done: list[int] = []
    with prefect_api(own_prefect.api_url):
        with get_client(sync_client=True) as client:
            client.create_concurrency_limit(unique_name, 1)

        def slots_taken() -> int:
            with get_client(sync_client=True) as client:
                return client.read_global_concurrency_limit_by_name(f"tag:{unique_name}").active_slots

        stream = LtsStream(TagLimit(tag=unique_name, limit=1), str, lambda i: done.append(i) or i * 10, 60, "items")

        @flow(name="stream-through-a-database-outage")
        def stream_through_outage():
            from archiver.flows.parallel import run_alongside

            def feed():
                stream.add(0)
                # The first slice ran out of items and gave its slot back: the next item needs a new slice.
                local_services.poll_until(lambda: done == [0] and slots_taken() == 0, 60, "the first slice's end")
                with own_prefect.database_down():
                    stream.add(1)
                    time.sleep(8)  # the stream asks for a slot meanwhile
                    assert done == [0], "item 1 ran without a slot"

            return run_alongside(feed, lambda: stream.run(1), then=stream.close)[1]

        assert stream_through_outage() == [0, 10]
        assert slots_taken() == 0
