"""The audit's pure logic: the rolling fixity selection over simulated days, and the last-verified record on a
real folder."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archiver.packing import audit, naming
from archiver.packing.records import Manifest
from archiver.storage.lts import write_json_durably
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout

START = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
MB = 1024 * 1024


def simulate(sizes: dict[str, int], budget: int, period_days: int, days: int) -> dict[str, list[datetime]]:
    """Daily audit runs over `days` days: returns when each datablock was verified, starting with its
    verification before the first run. Time moves by arithmetic."""
    last = {
        archive_id: START - timedelta(days=random.Random(archive_id).randint(0, period_days - 1))
        for archive_id in sizes
    }  # as if archived at random times during the last period
    verified = {archive_id: [when] for archive_id, when in last.items()}
    for day in range(days):
        now = START + timedelta(days=day)
        blocks = [audit.StoredDatablock(a, "pid", size, last[a]) for a, size in sizes.items()]
        chosen = audit.select_for_fixity(blocks, budget)
        assert sum(b.packed_size for b in chosen) <= budget
        for block in chosen:
            last[block.archive_id] = now
            verified[block.archive_id].append(now)
    return verified


def test_every_datablock_is_verified_within_the_period_when_the_budget_suffices():
    rng = random.Random(7)
    sizes = {f"block-{i:04d}": rng.randint(1, 200) * MB for i in range(1500)}
    period = 90
    budget = sum(sizes.values()) // period + max(sizes.values())  # the LTS per period, plus one datablock of slack
    verified = simulate(sizes, budget, period, days=3 * period)
    for archive_id, times in verified.items():
        gaps = [b - a for a, b in zip(times, times[1:] + [START + timedelta(days=3 * period)], strict=True)]
        assert max(gaps) <= timedelta(days=period), f"{archive_id} went {max(gaps)} without verification"


def test_a_too_small_budget_leaves_datablocks_overdue():
    sizes = {f"block-{i}": 10 * MB for i in range(100)}
    blocks = [audit.StoredDatablock(a, "pid", s, START - timedelta(days=100)) for a, s in sizes.items()]
    chosen = audit.select_for_fixity(blocks, 50 * MB)
    assert len(chosen) == 5
    late = audit.overdue(set(blocks) - set(chosen), timedelta(days=90), START)
    assert len(late) == 95


def test_the_oldest_datablock_is_read_even_when_larger_than_the_budget_and_never_overtaken():
    huge = audit.StoredDatablock("huge", "pid", 50 * MB, START - timedelta(days=30))
    small = [audit.StoredDatablock(f"s{i}", "pid", MB, START - timedelta(days=i)) for i in range(5)]
    assert audit.select_for_fixity([huge, *small], 10 * MB) == [huge]
    assert audit.select_for_fixity(small, None) == sorted(small, key=lambda b: b.last_verified)


def test_a_restore_budget_is_never_exceeded_nor_the_oldest_overtaken():
    huge = audit.StoredDatablock("huge", "pid", 50 * MB, START - timedelta(days=30))
    small = [audit.StoredDatablock(f"s{i}", "pid", MB, START - timedelta(days=i)) for i in range(5)]
    assert audit.select_for_fixity([huge, *small], 10 * MB, oldest_always=False) == []
    assert (
        audit.select_for_fixity(small, 3 * MB, oldest_always=False) == sorted(small, key=lambda b: b.last_verified)[:3]
    )
    assert audit.select_for_fixity(small, 0, oldest_always=False) == []


def write_manifest(lts_root, pid: str, index: int, chk: str, created: datetime) -> str:
    archive_id = naming.archive_id(pid, index)
    tar = lts_layout.datablock_path(lts_root, archive_id)
    tar.parent.mkdir(parents=True, exist_ok=True)
    tar.write_bytes(b"x" * 1024)
    manifest = Manifest(
        datasetId=pid,
        archiveId=archive_id,
        size=0,
        packedSize=1024,
        chkAlg="sha256",
        dataFileList=[],
        chk=chk,
        created=created.isoformat(),
    )
    path = lts_layout.manifest_path(tar)
    write_json_durably(path, manifest.model_dump_json(), naming.partial_path(path))
    return archive_id


def test_last_verified_comes_from_the_audit_record_of_the_same_tar(tmp_path):
    created = START - timedelta(days=10)
    archive_id = write_manifest(tmp_path, "20.500.11935/a", 0, "aa", created)
    store = PosixLtsStore(tmp_path)
    assert audit.last_verified(store, archive_id) == created  # archival verified it when it wrote the manifest

    audit.record_verification(store, archive_id, START, [])
    assert audit.last_verified(store, archive_id) == START
    assert not list(lts_layout.datablocks_folder(tmp_path, "20.500.11935/a").glob("*.partial"))

    audit.record_verification(store, archive_id, START, ["member 'x' sha256 differs"])
    assert audit.last_verified(store, archive_id) == audit.NEVER  # failed: first in line again

    write_manifest(tmp_path, "20.500.11935/a", 0, "bb", START - timedelta(days=1))  # written again since
    assert audit.last_verified(store, archive_id) == START - timedelta(days=1)


@pytest.mark.parametrize("registered", [None, []], ids=["dataset unknown", "no datablocks"])
def test_consistency_names_dark_lost_and_leftovers(tmp_path, registered):
    pid = "20.500.11935/c"
    settled, fresh = START - timedelta(hours=49), START - timedelta(hours=1)
    dataset = audit.DatasetOnLts(
        pid,
        tars={"a.tar": 10, "b.tar": 20, "e.tar": 30, "f.tar": 40},
        manifests={"a.tar", "c.tar", "e.tar", "g.tar"},
        partials={"p.tar.partial": settled, "fresh.tar.partial": fresh},
        discarded={"d/old": START - timedelta(days=31), "d/new": START - timedelta(days=2)},
        # e, f and g: what a live archival is in the middle of (not registered yet, tar not renamed yet)
        changed={"a.tar": settled, "b.tar": settled, "c.tar": settled, "e.tar": fresh, "f.tar": fresh, "g.tar": fresh},
    )
    findings = audit.consistency_findings(
        dataset, registered, now=START, partial_age=timedelta(hours=48), discarded_retention=timedelta(days=30)
    )
    kinds = sorted((f.kind, f.what) for f in findings)
    assert kinds == [
        ("dark", "a.tar"),
        ("dark", "b.tar"),
        ("discarded-past-retention", "d/old"),
        ("manifest-without-tar", "c.tar"),
        ("stale-partial", "p.tar.partial"),
        ("tar-without-manifest", "b.tar"),
    ]
    assert all(f.pid == pid for f in findings)


def test_consistency_names_lost_and_resized_datablocks():
    dataset = audit.DatasetOnLts("p", tars={"a.tar": 10}, manifests={"a.tar"}, changed={"a.tar": START})
    registered = [{"archiveId": "a.tar", "packedSize": 11}, {"archiveId": "gone.tar", "packedSize": 5}]
    findings = audit.consistency_findings(
        dataset, registered, now=START, partial_age=timedelta(hours=1), discarded_retention=timedelta(days=1)
    )
    assert [(f.kind, f.what, f.detail) for f in findings] == [
        ("lost", "a.tar", "the tar has 10 bytes, SciCat records 11"),
        ("lost", "gone.tar", "registered in SciCat (5 bytes), no tar on the LTS"),
    ]


def test_consistency_names_a_datablock_registered_more_than_once():
    dataset = audit.DatasetOnLts(
        "p", tars={"a.tar": 10, "b.tar": 20}, manifests={"a.tar", "b.tar"}, changed={"a.tar": START, "b.tar": START}
    )
    registered = [{"archiveId": "a.tar", "packedSize": 10}] * 3 + [{"archiveId": "b.tar", "packedSize": 20}]
    findings = audit.consistency_findings(
        dataset, registered, now=START, partial_age=timedelta(hours=1), discarded_retention=timedelta(days=1)
    )
    assert [(f.kind, f.what, f.detail) for f in findings] == [
        ("duplicate-registration", "a.tar", "registered 3 times in SciCat; delete all but one record")
    ]


def test_the_audit_deployment_is_scheduled_from_lts_audit_cron_both_ways():
    import yaml

    from archiver.config.deployments import DEPLOYMENT_NAMES
    from archiver.config.settings import load_vars_file
    from archiver.flows.serve import audit_cron

    repo = Path(__file__).resolve().parents[3]
    settings = load_vars_file(repo / "prefect-vars.toml")
    [spec] = [
        d for d in yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"] if d["name"] == "lts_auditing"
    ]
    assert spec["entrypoint"].split()[0] == "backend/archiver/flows/audit.py:lts_audit"
    assert spec["schedules"] == [{"cron": "{{ $LTS_AUDIT_CRON }}", "timezone": "UTC"}]
    assert "LTS_AUDIT_CRON" in (repo / "backend/docker/deploy-flows.sh").read_text()
    assert DEPLOYMENT_NAMES["audit"] == "lts_audit/lts_auditing"
    assert audit_cron(settings) == settings.lts.audit_cron == "0 2 * * *"
    changed = settings.model_copy(update={"lts": settings.lts.model_copy(update={"audit_cron": "15 4 * * 1"})})
    assert audit_cron(changed) == "15 4 * * 1" and audit_cron(None) == "0 2 * * *"


def test_scicats_datablocks_beyond_the_inventory_are_lost_when_missing_resized_or_named_outside_their_folder(tmp_path):
    """What the listing of all of SciCat's datablocks finds, one stat each, on a real folder."""
    kept, gone, elsewhere = "20.500.1/kept", "20.500.1/gone", "20.500.1/elsewhere"
    tar = lts_layout.datablock_path(tmp_path, naming.archive_id(kept, 0))
    tar.parent.mkdir(parents=True)
    tar.write_bytes(b"x" * 10)
    registered = [
        (kept, naming.archive_id(kept, 0), 10),  # matches: nothing to say
        (kept, naming.archive_id(kept, 0), 11),  # another size
        (kept, naming.archive_id(kept, 1), 20),  # missing, its folder is there
        (gone, naming.archive_id(gone, 0), 30),  # missing with its whole folder
        (elsewhere, naming.archive_id(kept, 0), 10),  # names another dataset's tar
        ("inventoried/x", "anything", 5),  # compared by consistency_findings instead
    ]

    found = list(audit.lost_beyond_inventory(PosixLtsStore(tmp_path), iter(registered), {"inventoried/x"}))

    assert [(f.kind, f.pid, f.what) for f in found] == [
        ("lost", kept, naming.archive_id(kept, 0)),
        ("lost", kept, naming.archive_id(kept, 1)),
        ("lost", gone, naming.archive_id(gone, 0)),
        ("lost", elsewhere, naming.archive_id(kept, 0)),
    ]
    assert found[0].detail == "the tar has 10 bytes, SciCat records 11"
    assert found[1].detail == "registered in SciCat (20 bytes), no tar on the LTS"
    assert found[2].detail.endswith("no tar on the LTS; the dataset's folder is not on the LTS")
    assert "does not name a datablock in the dataset's own LTS folder" in found[3].detail
