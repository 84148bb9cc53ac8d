import threading
import time

import pytest

from archiver.storage.lts import (
    LtsWaitTimeout,
    free_percentage,
    has_free_space,
    wait_for_free_space,
    wait_until_readable,
)


def test_free_space_wait_returns_at_once_when_there_is_room(tmp_path):
    assert wait_for_free_space(tmp_path, 0, timeout_s=1) == pytest.approx(free_percentage(tmp_path), abs=1)


def test_has_free_space_compares_with_the_threshold(tmp_path):
    free = free_percentage(tmp_path)
    assert has_free_space(tmp_path, free - 1) and not has_free_space(tmp_path, min(free + 1, 100))


def test_free_space_wait_times_out_with_a_message_naming_path_threshold_and_settings(tmp_path):
    sleeps = []
    start = time.monotonic()
    with pytest.raises(LtsWaitTimeout) as e:
        wait_for_free_space(
            tmp_path,
            99.9999,
            timeout_s=0.7,
            first_interval_s=0.1,
            max_interval_s=0.2,
            sleep=lambda s: (sleeps.append(s), time.sleep(s)),
        )
    assert 0.6 < time.monotonic() - start < 3
    message = str(e.value)
    assert str(tmp_path) in message and "99.9999%" in message
    assert "LTS_FREE_SPACE_PERCENTAGE" in message and "LTS_FREE_SPACE_TIMEOUT_S" in message
    assert sleeps[:2] == [0.1, 0.2] and max(sleeps) <= 0.2  # grows, bounded


def test_readable_wait_sees_a_file_that_appears_later(tmp_path):
    path = tmp_path / "block.tar"
    timer = threading.Timer(0.3, lambda: path.write_bytes(b"x"))
    timer.start()
    try:
        wait_until_readable(path, timeout_s=5, first_interval_s=0.05)
    finally:
        timer.cancel()


def test_readable_wait_times_out_naming_the_file(tmp_path):
    with pytest.raises(LtsWaitTimeout, match="block.tar.*No such file.*LTS_FILE_TIMEOUT_S"):
        wait_until_readable(tmp_path / "block.tar", timeout_s=0.2, first_interval_s=0.05)
