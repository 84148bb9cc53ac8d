from datetime import datetime, timezone
from pathlib import Path

import pytest

from archiver.packing import naming, tarformat
from archiver.packing.errors import InvalidNameError, MissingFilesError
from archiver.packing.planning import SourceFile, check_expected_files, plan_datablocks

PID = "20.500.11935/0a1b-c2d3"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def source(path: str, size: int) -> SourceFile:
    return SourceFile(path, naming.landing_prefix(PID) + path, size, WHEN)


@pytest.mark.parametrize("pid", [PID, "plain", "a%2Fb", "x/y/z", "ünïcode pid", "50%"])
def test_safe_name_is_one_segment_and_reversible(pid):
    name = naming.safe_name(pid)
    assert "/" not in name and name not in (".", "..")
    assert naming.pid_from_safe_name(name) == pid


@pytest.mark.parametrize("pid", ["", "..", "../x", "a/../b", "a/..", "/abs", "a//b", "a/./b", "nul\0x", "tab\tx", "cr\rx", "back\\slash"])
def test_bad_pids_are_refused_naming_the_value(pid):
    with pytest.raises(InvalidNameError) as e:
        naming.landing_prefix(pid)
    assert repr(pid) in str(e.value)
    with pytest.raises(InvalidNameError):
        naming.datablocks_folder(Path("/lts"), pid)


@pytest.mark.parametrize("pid", ["raw_files", "a/raw_files/b", f"{PID}/raw_files/x"])
def test_pids_whose_landing_prefix_could_nest_in_another_are_user_errors(pid):
    from archiver.packing.errors import DatasetUserError

    with pytest.raises(DatasetUserError, match="raw_files") as e:
        naming.landing_prefix(pid)
    assert repr(pid) in str(e.value)
    assert naming.landing_prefix("raw_files_x")  # only a whole segment nests


def test_archive_ids_belong_to_their_dataset():
    assert naming.archive_id_of_dataset(PID, naming.archive_id(PID, 0))
    assert not naming.archive_id_of_dataset("other", naming.archive_id(PID, 0))
    assert not naming.archive_id_of_dataset(PID, "../etc/passwd")


def test_layout():
    assert naming.landing_prefix(PID) == f"openem-network/datasets/{PID}/raw_files/"
    assert naming.datablocks_folder(Path("/lts"), PID) == Path("/lts/openem-network/datasets/20.500.11935%2F0a1b-c2d3/datablocks")
    archive_id = naming.archive_id(PID, 3)
    assert archive_id == "openem-network/datasets/20.500.11935%2F0a1b-c2d3/datablocks/20.500.11935%2F0a1b-c2d3_00003.tar"
    assert naming.datablock_path(Path("/lts"), archive_id).parent == naming.datablocks_folder(Path("/lts"), PID)
    assert naming.retrieval_key(archive_id).startswith(naming.retrieval_prefix(PID))


@pytest.mark.parametrize("archive_id", [
    "../etc/passwd", "/lts/x.tar", "openem-network/datasets/x/datablocks/../../../y.tar",
    "openem-network/datasets/x/other/y.tar", "openem-network/datasets/x/datablocks/y.txt",
])
def test_archive_ids_outside_the_datasets_folder_are_refused(archive_id):
    with pytest.raises(InvalidNameError):
        naming.datablock_path(Path("/lts"), archive_id)


def test_plan_keeps_order_and_target_size_and_gives_big_files_their_own_block():
    files = [source(f"f{i:02d}", 300_000) for i in range(10)]
    files.insert(4, source("huge", 5_000_000))
    blocks = plan_datablocks(PID, files, 1_000_000)
    assert [f.path for b in blocks for f in b.files] == [f.path for f in files]
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert [[f.path for f in b.files] for b in blocks] == [
        ["f00", "f01", "f02"], ["f03"], ["huge"], ["f04", "f05", "f06"], ["f07", "f08", "f09"],
    ]  # 3 x (300000 + headers) fit in 1000000, 4 do not; order is never changed
    assert all(b.packed_size <= 1_000_000 for b in blocks if b.files[0].path != "huge")

def test_planned_packed_size_matches_the_tar_layout():
    f = source("a/" + "long" * 40 + ".bin", 1000)
    header = tarformat.member_header(f.path, f.size, int(WHEN.timestamp()))
    assert len(header) > 512  # long name needs a pax record
    assert f.packed_size == len(header) + 1024
    assert plan_datablocks(PID, [f], 10**9)[0].packed_size % tarformat.RECORD == 0


def test_expected_files_missing_or_resized_are_user_errors_naming_every_file():
    files = [source("a", 1), source("b", 2), source("extra", 3)]
    assert check_expected_files(PID, files, [("a", 1), ("./b", 2)]) == ["extra"]
    with pytest.raises(MissingFilesError) as e:
        check_expected_files(PID, files, [("a", 1), ("gone1", 5), ("gone2", 6)])
    assert e.value.files == ["gone1", "gone2"] and "gone1" in str(e.value) and PID in str(e.value)
    with pytest.raises(MissingFilesError, match="differ in size"):
        check_expected_files(PID, files, [("a", 99)])
