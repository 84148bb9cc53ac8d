"""An archival's progress shows the dataset's bytes once, with the phase beside them (writing, then verifying)."""

from archiver.flows.progress import PhasedCount, described_with_total, what_and_total

MB = 1_000_000


def test_an_archival_shows_its_21_mb_once_writing_then_verifying():
    count = PhasedCount("archiving 20.500.11935/a", 21 * MB, {"writing": 21 * MB, "verifying": 21 * MB})
    assert what_and_total(count.description()) == ("archiving 20.500.11935/a: writing", 21 * MB)

    count.add("writing", 7 * MB)
    assert round(count.percent(), 1) == 33.3
    count.add("verifying", 3 * MB)  # a datablock verified while another is still being written
    count.add("writing", 14 * MB)
    assert what_and_total(count.description()) == ("archiving 20.500.11935/a: verifying", 21 * MB)
    assert round(count.percent(), 1) == 14.3

    count.add("verifying", 18 * MB)
    assert count.percent() == 100.0 and count.phase() == "verifying"


def test_reused_datablocks_are_only_verified():
    count = PhasedCount("archiving p", 10 * MB, {"writing": 0, "verifying": 10 * MB})
    assert count.phase() == "verifying" and count.percent() == 0.0


def test_work_without_phases_is_described_by_what_is_counted_alone():
    count = PhasedCount("retrieving p: checked and uploaded", 5 * MB)
    count.add("", 5 * MB)
    assert count.description() == described_with_total("retrieving p: checked and uploaded", 5 * MB)
    assert count.percent() == 100.0


def test_a_description_not_written_with_a_total_is_not_read_as_one():
    assert what_and_total("some other artifact") is None
