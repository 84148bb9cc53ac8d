from datetime import UTC, datetime

import pytest

from archiver.packing import naming, tarformat
from archiver.packing.errors import ConflictingListingError, InvalidNameError, MissingFilesError
from archiver.packing.planning import (
    ListedFile,
    SourceFile,
    check_expected_files,
    listed_by_path,
    plan_datablocks,
    plan_dataset_datablocks,
)
from archiver.packing.records import DataFileRecord, ListedChecksum, Manifest

PID = "20.500.11935/0a1b-c2d3"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def source(path: str, size: int) -> SourceFile:
    return SourceFile(path, naming.landing_prefix(PID) + path, size, WHEN)


@pytest.mark.parametrize("pid", [PID, "plain", "a%2Fb", "x/y/z", "ünïcode pid", "50%"])
def test_safe_name_is_one_segment_and_reversible(pid):
    name = naming.safe_name(pid)
    assert "/" not in name and name not in (".", "..")
    assert naming.pid_from_safe_name(name) == pid


@pytest.mark.parametrize(
    "pid", ["", "..", "../x", "a/../b", "a/..", "/abs", "a//b", "a/./b", "nul\0x", "tab\tx", "cr\rx", "back\\slash"]
)
def test_bad_pids_are_refused_naming_the_value(pid):
    with pytest.raises(InvalidNameError) as e:
        naming.landing_prefix(pid)
    assert repr(pid) in str(e.value)
    with pytest.raises(InvalidNameError):
        naming.datablocks_key(pid)


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
    assert naming.datablocks_key(PID) == "openem-network/datasets/20.500.11935%2F0a1b-c2d3/datablocks"
    archive_id = naming.archive_id(PID, 3)
    assert (
        archive_id == "openem-network/datasets/20.500.11935%2F0a1b-c2d3/datablocks/20.500.11935%2F0a1b-c2d3_00003.tar"
    )
    assert naming.archive_id(PID, 3).rsplit("/", 1)[0] == naming.datablocks_key(PID)
    assert (
        naming.dataset_key_of(archive_id)
        == naming.dataset_key(PID)
        == "openem-network/datasets/20.500.11935%2F0a1b-c2d3"
    )
    assert naming.retrieval_key(archive_id).startswith(naming.retrieval_prefix(PID))


@pytest.mark.parametrize(
    "archive_id",
    [
        "../etc/passwd",
        "/lts/x.tar",
        "openem-network/datasets/x/datablocks/../../../y.tar",
        "openem-network/datasets/x/other/y.tar",
        "openem-network/datasets/x/datablocks/y.txt",
    ],
)
def test_archive_ids_outside_the_datasets_folder_are_refused(archive_id):
    with pytest.raises(InvalidNameError):
        naming.check_archive_id(archive_id)
    with pytest.raises(InvalidNameError):
        naming.dataset_key_of(archive_id)


def test_plan_keeps_order_and_target_size_and_gives_big_files_their_own_block():
    files = [source(f"f{i:02d}", 300_000) for i in range(10)]
    files.insert(4, source("huge", 5_000_000))
    blocks = plan_datablocks(PID, files, 1_000_000)
    assert [f.path for b in blocks for f in b.files] == [f.path for f in files]
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert [[f.path for f in b.files] for b in blocks] == [
        ["f00", "f01", "f02"],
        ["f03"],
        ["huge"],
        ["f04", "f05", "f06"],
        ["f07", "f08", "f09"],
    ]  # 3 x (300000 + headers) fit in 1000000, 4 do not; order is never changed
    assert all(b.packed_size <= 1_000_000 for b in blocks if b.files[0].path != "huge")


def test_planned_packed_size_matches_the_tar_layout():
    f = source("a/" + "long" * 40 + ".bin", 1000)
    header = tarformat.member_header(f.path, f.size, int(WHEN.timestamp()))
    assert len(header) > 512  # long name needs a pax record
    assert f.packed_size == len(header) + 1024
    assert plan_datablocks(PID, [f], 10**9)[0].packed_size % tarformat.RECORD == 0


def listed(*entries: tuple) -> dict[str, ListedFile]:
    """(path, size) or (path, size, sha256 value) entries as listed_by_path indexes them."""
    return listed_by_path(
        PID,
        [
            ListedFile(e[0], e[1], ListedChecksum(algorithm="sha256", value=e[2]) if len(e) > 2 else None)
            for e in entries
        ],
    )


def test_expected_files_missing_or_resized_are_user_errors_naming_every_file():
    files = [source("a", 1), source("b", 2), source("extra", 3)]
    assert check_expected_files(PID, files, listed(("a", 1), ("b", 2))) == ["extra"]
    with pytest.raises(MissingFilesError) as e:
        check_expected_files(PID, files, listed(("a", 1), ("gone1", 5), ("gone2", 6)))
    assert e.value.files == ["gone1", "gone2"] and "gone1" in str(e.value) and PID in str(e.value)
    with pytest.raises(MissingFilesError, match="differ in size"):
        check_expected_files(PID, files, listed(("a", 99)))


def test_a_path_listed_twice_must_say_the_same_both_times():
    assert listed(("a", 1, "aa"), ("a", 1), ("a", 1, "AA"))["a"].checksum.value == "aa"
    with pytest.raises(ConflictingListingError) as e:
        listed(("a", 1, "aa"), ("b", 2), ("a", 1, "bb"), ("b", 3))
    assert e.value.files == ["a (1 bytes, sha256 aa and 1 bytes, sha256 bb)", "b (2 bytes and 3 bytes)"]


def manifest_of(index: int, *files: SourceFile, chk: str = "c") -> Manifest:
    members = [
        DataFileRecord(path=f.path, size=f.size, time=f.modified.isoformat(), chk=chk, uid="0", gid="0", perm="0644")
        for f in files
    ]
    return Manifest(
        datasetId=PID,
        archiveId=naming.archive_id(PID, index),
        size=sum(f.size for f in files),
        packedSize=1024,
        chkAlg="sha256",
        dataFileList=members,
        chk="t",
        created=WHEN.isoformat(),
    )


def test_datablocks_on_the_lts_holding_the_same_files_are_reused_and_new_ones_never_take_a_used_name():
    a, b, c = source("a", 10), source("b", 20), source("c", 30)
    changed_b = SourceFile("b", b.key, 20, WHEN.replace(year=2027))  # uploaded again: another modification time
    on_lts = [manifest_of(0, a), manifest_of(1, b), manifest_of(4, c, chk="old")]
    plan = plan_dataset_datablocks(PID, [a, changed_b, c], listed(("c", 30, "new")), on_lts, {0, 1, 3, 4}, 10**9)
    assert [m.archiveId for m in plan.reused] == [naming.archive_id(PID, 0)]
    assert [[f.path for f in block.files] for block in plan.new] == [["b", "c"]]
    assert [block.index for block in plan.new] == [5]  # after every index in use, gaps included
    assert plan.superseded == [naming.archive_id(PID, 1), naming.archive_id(PID, 4)]


def test_registered_datablocks_are_preferred_when_two_hold_the_same_file():
    a = source("a", 10)
    plan = plan_dataset_datablocks(
        PID, [a], {}, [manifest_of(0, a), manifest_of(1, a)], {0, 1}, 10**9, registered=[naming.archive_id(PID, 1)]
    )
    assert [m.archiveId for m in plan.reused] == [naming.archive_id(PID, 1)] and plan.new == []
    assert plan.superseded == [naming.archive_id(PID, 0)]


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("20.500.11935%2F0a1b-c2d3_00007.tar", 7),
        ("20.500.11935%2F0a1b-c2d3_00007.manifest.json", 7),
        ("20.500.11935%2F0a1b-c2d3_123456.tar.partial", 123456),
        ("20.500.11935%2F0a1b-c2d3_00007.txt", None),
        ("other_00007.tar", None),
        ("20.500.11935%2F0a1b-c2d3_x.tar", None),
    ],
)
def test_datablock_index_is_read_from_every_datablock_file_name_of_the_dataset(name, index):
    assert naming.datablock_index(PID, name) == index
