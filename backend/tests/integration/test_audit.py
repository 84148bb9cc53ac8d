"""The `lts_audit` flow and `archiver audit` against datasets archived by the real flows: each kind of damage is
found and named with its dataset and datablock; an untouched LTS passes; the byte budget and the tag hold
(read from the task-run history and the logs of the audit's slices)."""

from __future__ import annotations

import contextvars
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from datetime import UTC, datetime

import pytest

from archiver import local_services
from archiver.config.runtime import load_run_configuration
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.audit import PROBLEM_EVENT, LtsAuditFailed, lts_audit
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.task_states import exception_of
from archiver.local_services import poll_until
from archiver.metrics.collector import ArchiverCollector
from archiver.packing import audit, naming
from archiver.scicat.models import NewDatablock
from tests import lts_layout
from tests.integration.cold_lts import pipeline_store, use_cold_lts
from tests.integration.task_history import most_at_once, tagged_task_runs_since

pytestmark = pytest.mark.integration


@pytest.fixture
def scicat_url(services_log_dir, scicat_secrets_dir):
    """A SciCat of this test alone: an audit without --pid reconciles every datablock SciCat holds with this
    test's LTS, so datablocks other tests registered would be lost here."""
    with local_services.scicat_dev_server(scicat_secrets_dir, services_log_dir) as server:
        yield server.url


def archived(pipeline, num_files: int = 2, file_size_mb: float = 0.6) -> tuple[str, list]:
    """A dataset archived by the archival flow (one datablock per file: 1 MB target); its SciCat datablocks."""
    pid = create_test_dataset_flow(num_files=num_files, file_size_mb=file_size_mb)
    archive_datasets_flow(job_id=pipeline.new_job("archive", [pid]))
    return pid, pipeline.scicat.get_datablocks(pid)


def findings_of(state) -> list:
    error = exception_of(state)
    assert isinstance(error, LtsAuditFailed), error
    return error.findings


def flip_a_byte(pipeline, archive_id):
    with open(lts_layout.datablock_path(pipeline.lts_root, archive_id), "r+b") as f:
        f.seek(1024 + 100)  # inside the first member's data
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))


def truncate(pipeline, archive_id):
    tar = lts_layout.datablock_path(pipeline.lts_root, archive_id)
    os.truncate(tar, tar.stat().st_size // 2)


def days_old(*paths, days: float = 3) -> None:
    """Files last changed `days` ago: older than any live run (LTS_AUDIT_PARTIAL_AGE_HOURS), so not work in progress."""
    then = time.time() - days * 24 * 3600
    for path in paths:
        os.utime(path, (then, then))


def delete_manifest(pipeline, archive_id):
    tar = lts_layout.datablock_path(pipeline.lts_root, archive_id)
    lts_layout.manifest_path(tar).unlink()
    days_old(tar)


def delete_datablock(pipeline, archive_id):
    tar = lts_layout.datablock_path(pipeline.lts_root, archive_id)
    tar.unlink()
    lts_layout.manifest_path(tar).unlink()


def add_dark_datablock(pipeline, archive_id):
    """A copy of the datablock under a name SciCat does not list; returns that name."""
    pid = naming.pid_from_safe_name(archive_id.split("/")[2])
    dark = naming.archive_id(pid, 7)
    source, target = (lts_layout.datablock_path(pipeline.lts_root, a) for a in (archive_id, dark))
    shutil.copyfile(source, target)
    shutil.copyfile(lts_layout.manifest_path(source), lts_layout.manifest_path(target))
    days_old(target, lts_layout.manifest_path(target))
    return dark


def add_old_partial(pipeline, archive_id):
    partial = naming.partial_path(lts_layout.datablock_path(pipeline.lts_root, archive_id.replace("_00000", "_00005")))
    partial.write_bytes(b"half a tar")
    days_old(partial)
    return partial.relative_to(pipeline.lts_root).as_posix()


def resize_in_scicat(pipeline, archive_id):
    pid = naming.pid_from_safe_name(archive_id.split("/")[2])
    [block] = [d for d in pipeline.scicat.get_datablocks(pid) if d.archive_id == archive_id]
    pipeline.scicat.delete_datablock(pid, block.id)
    fields = block.model_dump(include=set(NewDatablock.model_fields))
    pipeline.scicat.create_datablock(pid, NewDatablock(**{**fields, "packed_size": block.packed_size + 512}))


DAMAGE = {
    "flipped byte": (flip_a_byte, {"fixity"}),
    "truncated tar": (truncate, {"fixity", "lost"}),
    "deleted manifest": (delete_manifest, {"tar-without-manifest"}),
    "missing datablock": (delete_datablock, {"lost"}),
    "dark datablock": (add_dark_datablock, {"dark"}),
    "old partial": (add_old_partial, {"stale-partial"}),
    "scicat size mismatch": (resize_in_scicat, {"lost"}),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_each_kind_of_damage_is_found_and_named(pipeline, damage):
    do, kinds = DAMAGE[damage]
    pid, blocks = archived(pipeline)
    target = blocks[0].archive_id
    named = do(pipeline, target) or target

    state = lts_audit(everything=True, return_state=True)

    assert state.is_failed()
    findings = findings_of(state)
    assert {f.kind for f in findings} == kinds, [f.line() for f in findings]
    assert all(f.pid == pid and f.what == named for f in findings), [f.line() for f in findings]
    rows = table_rows(state)
    assert any(row["dataset"] == pid and row["datablock"] == named and row["result"] != "verified" for row in rows)
    expected = {(pid, named, kind) for kind in kinds}
    assert problem_events(state, until=lambda got: got >= expected) >= expected


def test_an_untouched_lts_passes_and_every_datablock_is_recorded_as_verified(pipeline):
    pids_blocks = [archived(pipeline, 2), archived(pipeline, 1)]

    state = lts_audit(everything=True, return_state=True)

    assert state.is_completed(), exception_of(state)
    assert state.result()["checked"] == state.result()["datablocks"] == 3
    assert state.result()["problems"] == 0
    for _pid, blocks in pids_blocks:
        for block in blocks:
            record = pipeline.lts_root / audit.audit_record_key(block.archive_id)
            assert json.loads(record.read_text())["ok"] is True
    assert [row["result"] for row in table_rows(state)] == ["verified"] * 3


def test_a_scheduled_audit_finds_every_datablock_of_a_dataset_whose_folder_is_gone(pipeline):
    """No --pid: SciCat's datablocks are listed (pages of 2 here, 5 datablocks), so a dataset the LTS holds
    nothing of any more is found too, each of its datablocks named."""
    gone, gone_blocks = archived(pipeline, num_files=3)
    kept, _ = archived(pipeline, num_files=2)
    since = pipeline.scicat_dev.state()["nextSeq"]

    untouched = lts_audit(scicat_page_size=2, return_state=True)
    assert untouched.is_completed(), exception_of(untouched)
    pages = [
        e for e in pipeline.scicat_dev.requests() if e["seq"] >= since and e["path"].startswith("/api/v3/datablocks")
    ]
    assert [e["status"] for e in pages] == [200] * 3

    shutil.rmtree(lts_layout.dataset_folder(pipeline.lts_root, gone))
    state = lts_audit(scicat_page_size=2, return_state=True)

    assert state.is_failed()
    findings = findings_of(state)
    expected = {(gone, block.archive_id, "lost") for block in gone_blocks}
    assert {(f.pid, f.what, f.kind) for f in findings} == expected, [f.line() for f in findings]
    assert all("no tar on the LTS" in f.detail and "folder" in f.detail for f in findings)
    rows = {(row["dataset"], row["datablock"]): row["result"] for row in table_rows(state)}
    assert all(rows[(pid, what)].startswith("lost: ") for pid, what, _ in expected)
    assert problem_events(state, until=lambda got: got >= expected) >= expected


def test_the_byte_budget_holds_and_the_next_run_takes_the_next_oldest(pipeline):
    pid, blocks = archived(pipeline, num_files=4)  # four datablocks of about 0.6 MB
    sizes = {b.archive_id: b.packed_size for b in blocks}

    pipeline.set_settings(LTS_AUDIT_BUDGET_MB=1)
    first = lts_audit(return_state=True)
    second = lts_audit(byte_budget_mb=1, return_state=True)

    read_first, read_second = verified_in(first), verified_in(second)
    for read in (read_first, read_second):
        assert len(read) == 1 and sum(sizes[a] for a, _ in read) <= 1024 * 1024
    assert read_first[0][0] != read_second[0][0]
    assert first.is_completed() and first.result()["checked"] == 1
    verify_tag = tomllib.loads(pipeline.limits_file.read_text())["VERIFY_LTS_LIMIT"]["tag"]
    assert all(tags == [verify_tag] for _, tags in read_first + read_second)


def test_an_audit_of_a_cold_store_restores_within_its_budget_and_checks_every_stored_checksum(
    pipeline, s3, cold_s3_proxy, unique_name
):
    """Four datablocks of about 0.6 MB on the cold tier stand-in; a restore budget of 1 MB re-reads (restores)
    the one verified longest ago, and S3's checksums of all four are checked: the one whose stored bytes were
    replaced behind the store's back is found, though it was verified most recently and not restored."""
    bucket = f"{unique_name}-lts"
    use_cold_lts(pipeline, s3, cold_s3_proxy, bucket)
    pipeline.set_settings(LTS_STORAGE_ROOT=str(pipeline.lts_root / "not-mounted"))  # no folder on s3: not used
    pid, blocks = archived(pipeline, num_files=4)
    store = pipeline_store(pipeline)
    assert cold_s3_proxy.tier.restore_requests == []  # archival verified by S3's checksums
    damaged = blocks[-1].archive_id
    audit.record_verification(store, damaged, datetime.now(UTC), [])  # the last one the budget would take
    stored = bytearray(s3.get_object(Bucket=bucket, Key=damaged)["Body"].read())
    stored[-2048] ^= 0x01  # the same size: only a checksum tells
    s3.put_object(Bucket=bucket, Key=damaged, Body=bytes(stored), StorageClass="DEEP_ARCHIVE")
    pipeline.set_settings(LTS_AUDIT_RESTORE_BUDGET_MB=1)

    state = lts_audit(return_state=True)

    restored = [key for _, key, _ in cold_s3_proxy.tier.restore_requests]
    sizes = {b.archive_id: b.packed_size for b in blocks}
    assert len(restored) == 1 and sum(sizes[key] for key in restored) <= 1024 * 1024
    assert damaged not in restored
    assert [archive_id for archive_id, _ in reread_in(state)] == restored
    findings = findings_of(state)
    assert [(f.kind, f.pid, f.what) for f in findings] == [("fixity", pid, damaged)], [f.line() for f in findings]
    assert "keeps no SHA-256" in findings[0].detail
    assert json.loads(store.read_text(audit.audit_record_key(damaged)))["ok"] is False  # re-read first next time

    pipeline.set_settings(LTS_AUDIT_RESTORE_BUDGET_MB=0)
    lts_audit(return_state=True)
    assert len(cold_s3_proxy.tier.restore_requests) == 1  # a budget of 0: nothing restored

    config = load_run_configuration()
    metrics = {family.name: family for family in ArchiverCollector(lambda: config, lambda: s3)._lts(config)}
    assert metrics["archiver_lts_datablocks_failing_audit"].samples[0].value == 1
    assert "archiver_lts_free_ratio" not in metrics  # a bucket has no free space to report


def test_the_audit_command_names_the_problem_and_exits_1(pipeline):
    pid, blocks = archived(pipeline, 1)
    flip_a_byte(pipeline, blocks[0].archive_id)

    result = audit_command("--pid", pid)

    assert result.returncode == 1, result.stderr
    assert f"fixity: dataset {pid}, {blocks[0].archive_id}: " in result.stdout
    assert "LTS audit found 1 problem(s)" in result.stderr

    refused = audit_command("--pid", pid, "--all")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1


def test_the_audit_command_reports_a_clean_dataset(pipeline):
    pid, blocks = archived(pipeline, 2)
    result = audit_command("--pid", pid)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 datablock(s) re-verified" in result.stdout


def test_the_audit_command_refuses_a_missing_lts_in_one_line(pipeline):
    result = audit_command(LTS_STORAGE_ROOT=str(pipeline.lts_root / "not-mounted"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: LTS_STORAGE_ROOT ") and "not-mounted is not a folder here" in result.stderr
    assert result.stderr.count("\n") == 1  # checked before any flow run starts


def audit_command(*args: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archiver.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **environment},
    )


# --- what Prefect recorded ---


def table_rows(state) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        [table] = [
            a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
            if a.type == "table"
        ]
    return json.loads(table.data) if isinstance(table.data, str) else table.data


def verified_in(state) -> list[tuple[str, list[str]]]:
    """(archiveId, tags of the task run that read it) of each datablock the audit run read back."""
    return read_back_in(state, "verification of ")


def reread_in(state) -> list[tuple[str, list[str]]]:
    """(archiveId, tags of the task run that read it) of each datablock an audit run of a cold store re-read."""
    return read_back_in(state, "re-read of ")


def read_back_in(state, prefix: str, timeout_s: float = 30) -> list[tuple[str, list[str]]]:
    """(archiveId, tags of its slice task run) of each datablock whose outcome the audit run's slices logged
    (`<prefix><archiveId> done` or `... failed: ...`), from Prefect's task-run history and logs. Logs are
    shipped in batches: polled until each slice's last line, Prefect's "Finished in state", is there."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterTaskRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    def logged():
        with get_client(sync_client=True) as client:
            slices = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="audit fixity reads (slice")),
            )
            logs = client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[s.id for s in slices])), limit=200
            )
        ended = {log.task_run_id for log in logs if log.message.startswith("Finished in state")}
        if ended != {s.id for s in slices}:
            return None
        tags = {s.id: sorted(s.tags) for s in slices}
        read = [
            (log.message.removeprefix(prefix).split(" ", 1)[0], tags[log.task_run_id])
            for log in logs
            if log.message.startswith(prefix)
        ]
        return (read,)  # a tuple: no read is an answer too

    return local_services.poll_until(logged, timeout=timeout_s, what="the audit's slices to log their reads")[0]


def problem_events(state, until, timeout_s: float = 30) -> set[tuple[str, str, str]]:
    """(dataset, datablock, kind) of the audit's problem events of the run, as Prefect's event API serves them;
    polled until `until(them)` holds or `timeout_s` passed (events arrive asynchronously)."""
    import httpx
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    run_id = str(state.state_details.flow_run_id)
    body = {
        "filter": {"event": {"name": [PROBLEM_EVENT]}, "related": {"id": [f"prefect.flow-run.{run_id}"]}},
        "limit": 50,
    }
    auth_string = PREFECT_API_AUTH_STRING.value()
    auth_string = getattr(auth_string, "get_secret_value", lambda: auth_string)()
    auth = httpx.BasicAuth(*auth_string.split(":", 1))
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.post(
            f"{PREFECT_API_URL.value()}/events/filter", json=body, auth=auth, timeout=10
        ).raise_for_status()
        got = {
            (e["payload"]["dataset"], e["payload"]["datablock"], e["payload"]["kind"]) for e in answer.json()["events"]
        }
        if until(got) or time.monotonic() > deadline:
            return got
        time.sleep(1)


def test_an_audit_during_an_archival_shares_the_verify_limit_and_takes_its_datablocks_for_work_in_progress(pipeline):
    """VERIFY_LTS_LIMIT 1, an audit of everything started once an archival has verified its first datablock:
    no two verifications ever run at once (read from the task-run history), and the archival's datablocks,
    not yet registered in SciCat, are not reported as dark."""
    pipeline.set_limits(VERIFY_LTS_LIMIT=1)
    verify_tag = tomllib.loads(pipeline.limits_file.read_text())["VERIFY_LTS_LIMIT"]["tag"]
    archived(pipeline, num_files=6, file_size_mb=3)  # six datablocks for the audit to re-read
    busy = create_test_dataset_flow(num_files=8, file_size_mb=3)
    job = pipeline.new_job("archive", [busy])
    since = datetime.now(UTC)
    states = {}

    def run(name, flow, **parameters):
        states[name] = flow(**parameters, return_state=True)

    def start(name, flow, **parameters):
        thread = threading.Thread(target=contextvars.copy_context().run, args=(run, name, flow), kwargs=parameters)
        thread.start()
        return thread

    threads = [start("archive", archive_datasets_flow, job_id=job)]
    first_tar = lts_layout.datablock_path(pipeline.lts_root, naming.archive_id(busy, 0))
    poll_until(first_tar.exists, 120, "the archival's first datablock", interval=0.05)
    threads.append(start("audit", lts_audit, everything=True))
    for thread in threads:
        thread.join(600)

    assert states["archive"].is_completed(), states["archive"]
    assert states["audit"].is_completed(), exception_of(states["audit"])
    verifications = tagged_task_runs_since(verify_tag, "", since)
    audit_run = states["audit"].state_details.flow_run_id
    from_audit = [r for r in verifications if r.flow_run_id == audit_run]
    read_back = states["audit"].result()["checked"]
    print(f"audit beside an archival: {read_back} datablocks read back in {len(from_audit)} {verify_tag} task runs")
    # Both read in slices holding the slot (flows/lts_slices.py): the archival its eight datablocks, the audit
    # every datablock on the LTS then, in fewer task runs than datablocks.
    assert read_back >= 6 and 1 <= len(from_audit) < read_back, (read_back, [r.name for r in from_audit])
    assert any(busy in r.name for r in verifications if r not in from_audit)
    assert most_at_once([(r.start_time, r.end_time) for r in verifications]) == 1
