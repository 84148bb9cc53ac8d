"""Part sizes of presigned multipart uploads, upload paths, and the service-account file."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from archiver.api.upload_access import parse_service_accounts
from archiver.api.uploads import checked_path
from archiver.config.errors import ConfigError
from archiver.storage import multipart
from archiver.storage.multipart import MAX_PARTS, MIB, TooLargeError, part_count, part_length, part_size_for

PREFIX = "openem-network/datasets/20.500.1/x/raw_files/"


@pytest.mark.parametrize("size", [0, 1, 5 * MIB, 64 * MIB + 1, 10**12, 4 * 2**40, multipart.MAX_OBJECT_SIZE])
def test_every_file_up_to_5_tib_fits_in_10000_parts_of_at_least_5_mib(size):
    part_size = part_size_for(size, 64 * MIB)
    count = part_count(size, part_size)
    assert 5 * MIB <= part_size <= multipart.MAX_PART_SIZE and part_size % MIB == 0
    assert 1 <= count <= MAX_PARTS
    lengths = [part_length(size, part_size, n) for n in range(1, count + 1)]
    assert sum(lengths) == size
    assert all(length == part_size for length in lengths[:-1])


def test_small_files_keep_the_preferred_part_size_and_too_large_ones_are_refused():
    assert part_size_for(100 * MIB, 8 * MIB) == 8 * MIB
    assert part_size_for(100 * MIB, 1) == 5 * MIB  # never below S3's minimum
    with pytest.raises(TooLargeError, match="5 TiB"):
        part_size_for(multipart.MAX_OBJECT_SIZE + 1, 64 * MIB)


@pytest.mark.parametrize(
    "path", ["../x", "/abs", "a//b", "a\\b", "./a", "a/./b", "a/..", "", "a\x00b", "a\u2028b", "x" * 1100]
)
def test_paths_that_could_leave_the_landing_prefix_are_422(path):
    with pytest.raises(HTTPException) as refused:
        checked_path(path, PREFIX)
    assert refused.value.status_code == 422 and "file path" in refused.value.detail


@pytest.mark.parametrize("path", ["a.bin", "sub/dir/b.tif", "with space/é.txt", "..hidden/x"])
def test_relative_paths_below_the_prefix_are_keys(path):
    assert checked_path(path, PREFIX) == PREFIX + path


def test_service_accounts_file_lines_and_comments():
    accounts = parse_service_accounts("# comment\n\nrobot:" + "t" * 20 + ":g1, g2\nlone:" + "u" * 16 + ":\n", "f")
    assert [(a.name, sorted(a.groups)) for a in accounts] == [("robot", ["g1", "g2"]), ("lone", [])]
    assert "t" * 20 not in repr(accounts)
    with pytest.raises(ConfigError, match="line 1") as refused:
        parse_service_accounts("robot:short:g", "f")
    assert "short" not in str(refused.value)
