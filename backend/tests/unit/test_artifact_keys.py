"""Artifact keys: what Prefect accepts, the same for the same dataset every job, apart for different ones."""

import re

import pytest

from archiver.flows.artifact_keys import artifact_key

PIDS = ["20.500.11935/ABC-1", "20.500.11935/abc-1", "20.500.11935-abc-1", "/", "ünïcode"]


@pytest.mark.parametrize("pid", PIDS)
def test_a_key_has_only_lowercase_letters_digits_and_dashes(pid):
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", artifact_key("datablocks", pid))


def test_a_dataset_has_one_key_across_jobs_and_datasets_keep_theirs_apart():
    assert artifact_key("datablocks", PIDS[0]) == artifact_key("datablocks", PIDS[0])
    assert len({artifact_key("datablocks", pid) for pid in PIDS}) == len(PIDS)
    assert artifact_key("datablocks", PIDS[1]).startswith("datablocks-20-500-11935-abc-1-")
