"""Whether a dataset's files as SciCat lists them are what its registered datablocks hold."""

from datetime import UTC, datetime

from archiver.packing import naming
from archiver.packing.planning import ListedFile, SourceFile
from archiver.packing.records import ListedChecksum, listed_algorithm
from archiver.packing.registered import archive_differences, written_from

PID = "20.500.11935/0a1b"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def registered(*files: tuple[str, int, str], chk_alg: str = "sha256") -> dict:
    """SciCat's JSON of a datablock holding (path, size, chk) files, written at WHEN."""
    return {
        "archiveId": naming.archive_id(PID, 0),
        "chkAlg": chk_alg,
        "dataFileList": [{"path": p, "size": s, "chk": c, "time": "2026-01-02T03:04:05.000Z"} for p, s, c in files],
    }


def sha256(value: str) -> ListedChecksum:
    return ListedChecksum(algorithm="sha256", value=value)


def test_what_is_listed_as_archived_differs_in_nothing():
    differences = archive_differences(
        [registered(("a", 1, "aa"), ("b", 2, "bb"))], [ListedFile("a", 1, sha256("AA")), ListedFile("b", 2)]
    )
    assert differences.changed == [] and differences.not_archived == []


def test_a_file_listed_again_with_other_content_or_dropped_from_the_list_is_a_change():
    differences = archive_differences(
        [registered(("a", 1, "aa"), ("b", 2, "bb"), ("gone", 3, "gg"))],
        [
            ListedFile("a", 1, sha256("aa")),
            ListedFile("a", 5, sha256("new")),  # a second origdatablock
            ListedFile("b", 2, sha256("other")),
            ListedFile("added", 4),
        ],
    )
    assert differences.changed == [
        "a (listed 5 bytes, archived 1)",
        "b (listed sha256 other, archived bb)",
        "gone (archived, no longer listed)",
    ]
    assert differences.not_archived == ["added (listed, in no registered datablock)"]


def test_checksums_in_another_algorithm_are_not_compared():
    differences = archive_differences(
        [registered(("a", 1, "aa"), chk_alg="sha256")],
        [ListedFile("a", 1, ListedChecksum(algorithm="md5", value="other"))],
    )
    assert differences.changed == []


def test_a_registration_is_unfinished_only_while_the_landing_zone_holds_its_files_as_written():
    wire = [registered(("a", 1, "aa"), ("b", 2, "bb"))]
    as_written = [SourceFile(p, naming.landing_prefix(PID) + p, s, WHEN) for p, s in (("a", 1), ("b", 2))]
    assert written_from(wire, as_written)
    assert not written_from(wire, as_written[:1])  # cleaned after the archival, one file uploaded again
    uploaded_again = SourceFile("b", as_written[1].key, 2, WHEN.replace(minute=5))
    assert not written_from(wire, [as_written[0], uploaded_again])


def test_listed_algorithm_names_are_read_as_ingestors_write_them():
    assert [listed_algorithm(n) for n in ("SHA-256", "sha256", "MD5", "sha_512", "sha1", "blake2b")] == [
        "sha256",
        "sha256",
        "md5",
        "sha512",
        "sha1",
        "blake2b",
    ]
    assert [listed_algorithm(n) for n in (None, "", "crc32", "shake_128")] == [None, None, None, None]
