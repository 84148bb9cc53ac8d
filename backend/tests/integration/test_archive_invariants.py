"""The archive's invariants (ARCHITECTURE.md, issue 25), checked after every step of random sequences of what
owners, SciCat jobs and crashes do to datasets.

A Hypothesis `RuleBasedStateMachine` drives, against the real services of the integration tier (Prefect server,
the S3 server over HTTP, the strict SciCat development server, the archiver API, an LTS folder):

- creating a dataset in SciCat with an origdatablock listing its files with their sha256 `chk` (as an ingestor
  does), optionally uploading them right away (one dataset per example: a second one dilutes the sequences that
  matter more than it adds);
- uploads through the archiver API only (start, PUT of the part to its presigned URL, complete; an upload
  abandoned with `abort`, also naming another file's path; a part PUT with 1 MiB more than the file has, which
  must never complete a file, after which the uploader aborts), never by direct S3 puts: the budget and the
  refusals of the API are part of what is tested;
- finalize (optionally creating the archive job, which is then run);
- archive and retrieve jobs (the real flows, one dataset per job);
- the owner's ordinary `PATCH datasets/{pid}` with `{"datasetlifecycle": {"retrievable": true}}`, which SciCat
  answers by replacing the whole lifecycle;
- the owner uploading a file again: the same bytes, other bytes of another size (with a new origdatablock listing
  them, as an ingestor registers a new version), or a new file (with a new origdatablock);
- an archival killed with SIGKILL at a chosen point (the flow runs in a child process that kills itself when it
  reaches that point: a real kill, no hook or `finally` runs), then marked Crashed as the runner reports a dead
  process and recovered by `recover_job`, as the recovery automation starts it.

Refusals (409 and 507 of the API, failed jobs) are legitimate outcomes of a step; what is checked is the state
after it, never the messages. After every step (`archive_invariants`, in this order):

1. every datablock SciCat lists is on the LTS as its manifest says (tar sha256 = manifest `chk`, manifest = SciCat's
   record), and a datablock registered at the previous check and still registered has the same tar bytes
   (model: archiveId -> sha256); one whose registration went away held nothing that now exists nowhere else
   (landing zone or another registered datablock);
2. no archiveId is registered twice for a dataset;
3. when a dataset's registered datablocks change, they hold every file SciCat's origdatablocks list then (the
   latest listing of each path) with its `chk` (not archived = no registered datablocks);
4. every file the owner uploaded (the last bytes of each path) that no registered datablock holds is still in
   the landing zone with those bytes;
5. objects in the landing zone plus unfinished uploads (each at least the size it was started for) never exceed
   UPLOAD_LANDINGZONE_BUDGET_GB;
6. no `.partial` file on the LTS (every step ends with its job finished).

Bounded for CI: 6 examples of at most 20 steps (ARCHIVER_INVARIANTS_EXAMPLES, ARCHIVER_INVARIANTS_STEPS), files
of 96-520 KiB with the smallest target datablock size the settings allow (1 MiB), so a dataset has 1-3
datablocks. Fewer examples or steps miss the overwrite of a registered datablock on d0a0a30 too often. The number
of examples and steps, and the seconds each rule took, are printed at the end.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.packing import naming
from archiver.packing.naming import landing_prefix
from archiver.packing.records import read_manifest
from archiver.scicat.models import DataFile, NewOrigDatablock, new_raw_dataset
from archiver.storage import multipart
from archiver.storage.posix_store import PosixLtsStore
from tests import lts_layout
from tests.integration.test_api import deployments  # noqa: F401 (the fixture)
from tests.integration.test_uploads import Uploader, running_upload_api

pytestmark = pytest.mark.integration

KIB, MIB = 2**10, 2**20
FILE_SIZES = (96 * KIB, 300 * KIB, 520 * KIB)  # with the 1 MiB target: 1-3 datablocks per dataset
BUDGET_BYTES = 6 * MIB  # tight enough that uploads are refused (507) now and then
OWNER_GROUP = "group-invariants"
MAX_EXAMPLES = int(os.environ.get("ARCHIVER_INVARIANTS_EXAMPLES", "6"))
STEPS = int(os.environ.get("ARCHIVER_INVARIANTS_STEPS", "20"))
FINAL_JOB_STATUSES = {"finishedSuccessful", "finishedUnsuccessful", "finishedWithDatasetErrors"}

# Where a killed archival dies: after the call named (the n-th time it is made).
KILL_POINTS = (
    "lifecycle started",
    "datablock half written",
    "datablock registered",
    "lifecycle archived",
    "landing zone cleaned",
)

# The child process running an archival job; it SIGKILLs itself when it reaches the kill point.
KILLED_ARCHIVAL = r"""
import os, signal, sys
from archiver.packing import archive, cleanup
from archiver.scicat.client import ScicatClient
from archiver.flows.archive import archive_datasets_flow

job_id, point, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
reached = {}

def passed(name):
    reached[name] = reached.get(name, 0) + 1
    if name == point and reached[name] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)

def after(name, original, when=lambda *a, **k: True):
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            passed(name)
        return result
    return wrapper

status = lambda wanted: lambda *a, **k: str(getattr(k.get("archive_status_message"), "value", "")) == wanted
ScicatClient.update_lifecycle = after("lifecycle started", ScicatClient.update_lifecycle, status("started"))
ScicatClient.update_lifecycle = after("lifecycle archived", ScicatClient.update_lifecycle,
                                      status("datasetOnArchiveDisk"))
ScicatClient.create_datablock = after("datablock registered", ScicatClient.create_datablock)
archive._write_tar = after("datablock half written", archive._write_tar)  # before the rename: a .partial is left
cleanup.delete_landing_zone_files = after("landing zone cleaned", cleanup.delete_landing_zone_files)
archive_datasets_flow(job_id=job_id, return_state=True)
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class DatasetModel:
    pid: str
    files: dict[str, bytes]  # what the owner has: the bytes each listed path should hold
    uploaded: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the last bytes uploaded (completed)
    registrations: frozenset = frozenset()  # SciCat's datablocks at the last check
    listed_at_registration: dict[str, str] = field(default_factory=dict)  # path -> chk when they last changed

    def __repr__(self) -> str:
        return f"<dataset {self.pid}>"


@dataclass
class Counters:
    examples: int = 0
    steps: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1


COUNTERS = Counters()


def step(function):
    """A rule's body, counted and timed (printed at the end of the test)."""

    @functools.wraps(function)
    def counted(*args, **kwargs):
        COUNTERS.steps += 1
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            name = function.__name__.lstrip("_")
            COUNTERS.seconds[name] = COUNTERS.seconds.get(name, 0.0) + time.monotonic() - started

    return counted


@pytest.fixture(scope="module")
def invariants_api(tmp_path_factory, prefect_api_url, deployments):  # noqa: F811
    """The archiver API; it reads its settings from Prefect at its first request (after the test seeded them)
    and keeps them."""
    with running_upload_api(tmp_path_factory.mktemp("invariants-api"), prefect_api_url, deployments, 3600) as url:
        yield url


def make_machine(pipeline, owner: Uploader):
    landing_bucket = pipeline.settings.s3.landingzone_bucket
    s3, scicat, lts_root = pipeline.s3, pipeline.scicat, pipeline.lts_root

    class ArchiveMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.models: list[DatasetModel] = []  # one per example, see the rules
            self.model: DatasetModel | None = None
            self.changed_for_archive = self.changed_for_retrieve = True
            self.upload_refused = False  # the last upload was refused (409/507) and nothing changed since
            self.finalized = False
            self.registered_sha: dict[str, str] = {}  # archiveId -> tar sha256, while registered
            self.registered_files: dict[str, set[tuple[str, str]]] = {}  # archiveId -> (path, chk) it holds
            self.declared: dict[str, int] = {}  # upload id -> size of the file it was started for
            COUNTERS.examples += 1

        # --- helpers -------------------------------------------------------------------------------------------

        def _api(self, method: str, path: str, **kwargs) -> httpx.Response:
            return owner.http.request(method, path, **kwargs)

        def _landing(self, pid: str) -> dict[str, bytes]:
            prefix = landing_prefix(pid)
            found = {}
            for key in pipeline.landing_keys(pid):
                found[key[len(prefix) :]] = s3.get_object(Bucket=landing_bucket, Key=key)["Body"].read()
            return found

        def _listing(self, pid: str) -> dict[str, tuple[int, str | None]]:
            """What SciCat lists: path -> (size, chk), the latest origdatablock listing a path winning."""
            listed = {}
            for block in scicat.get_origdatablocks(pid):
                for f in block.data_file_list:
                    listed[f.path.removeprefix("./")] = (f.size, f.chk)
            return listed

        def _add_origdatablock(self, model: DatasetModel, paths: list[str]) -> None:
            entries = [
                DataFile(path=p, size=len(model.files[p]), time=datetime.now(UTC), chk=sha256(model.files[p]))
                for p in paths
            ]
            scicat.create_origdatablock(
                model.pid, NewOrigDatablock(size=sum(e.size for e in entries), chk_alg="sha256", data_file_list=entries)
            )
            self._changed()

        def _start(self, model: DatasetModel, path: str) -> httpx.Response:
            answer = self._api(
                "POST", "/uploads", json={"pid": model.pid, "files": [{"path": path, "size": len(model.files[path])}]}
            )
            if answer.status_code == 200:
                for plan in answer.json()["files"]:
                    if plan.get("uploadId"):
                        self.declared[plan["uploadId"]] = plan["size"]
            self.upload_refused = answer.status_code in (409, 507)
            COUNTERS.count(f"start upload: {answer.status_code}")
            return answer

        def _upload_file(self, model: DatasetModel, path: str) -> None:
            """One file through the API: start, PUT its one part, complete. Refusals are outcomes, not errors."""
            data = model.files[path]
            answer = self._start(model, path)
            if answer.status_code != 200:
                return
            [plan] = answer.json()["files"]
            if plan["state"] == "uploaded":  # S3 holds an object of that size already
                return
            assert plan["partCount"] == 1, plan
            if plan["partsDone"]:  # an upload given up earlier (an abort naming another file aborts nothing)
                assert plan["urls"] == [] and plan["partsDone"][0]["size"] == len(data), plan
                etag = plan["partsDone"][0]["etag"]
            else:
                assert [u["partNumber"] for u in plan["urls"]] == [1], plan
                put = httpx.put(plan["urls"][0]["url"], content=data, timeout=60)
                assert put.status_code == 200, f"{model.pid} {path}: part PUT answered {put.status_code}: {put.text}"
                etag = put.headers["ETag"]
            done = self._api(
                "POST",
                "/uploads/complete",
                json={
                    "pid": model.pid,
                    "path": path,
                    "uploadId": plan["uploadId"],
                    "parts": [{"partNumber": 1, "etag": etag}],
                },
            )
            COUNTERS.count(f"complete upload: {done.status_code}")
            if done.status_code == 200:
                model.uploaded[path] = sha256(data)
                self._changed()

        def _upload_missing(self, model: DatasetModel) -> None:
            """Upload every listed file whose landing-zone object is not the owner's bytes."""
            landing = self._landing(model.pid)
            for path, data in sorted(model.files.items()):
                if landing.get(path) != data:
                    self._upload_file(model, path)

        def _job_status(self, job_id: str) -> str | None:
            return pipeline.job(job_id)["jobStatusMessage"]

        def _run_archival(self, job_id: str) -> None:
            self.changed_for_archive, self.changed_for_retrieve, self.upload_refused = False, True, False
            archive_datasets_flow(job_id=job_id, return_state=True)
            status = self._job_status(job_id)
            COUNTERS.count(f"archive job: {status}")
            assert status in FINAL_JOB_STATUSES, f"archive job {job_id} left {status!r} after its run ended"

        # --- rules ---------------------------------------------------------------------------------------------
        # One dataset per example (more dilute the sequences that matter). Preconditions keep rules to where they
        # mean something: no job is sent twice in a row with nothing changed in between (it would repeat the
        # previous one), a retrieval or lifecycle PATCH needs registered datablocks, `upload` has files to send and
        # is not tried again after a refusal until something changed.

        @initialize(
            sizes=st.lists(st.sampled_from(FILE_SIZES), min_size=1, max_size=3),
            seed=st.integers(0, 2**16),
            upload=st.booleans(),
        )
        @step
        def create_dataset(self, sizes, seed, upload):
            """A dataset in SciCat with an origdatablock listing its files (sha256 `chk`), as an ingestor
            registers it; with `upload`, its files are uploaded right away."""
            files = {f"f{i + 1}.bin": content(seed + i, size) for i, size in enumerate(sizes)}
            dataset = new_raw_dataset(OWNER_GROUP, "invariants", size=sum(sizes), number_of_files=len(sizes))
            self.model = DatasetModel(pid=scicat.create_dataset(dataset).pid, files=files)
            self.models.append(self.model)
            self._add_origdatablock(self.model, sorted(files))
            if upload:
                self._upload_missing(self.model)

        def _changed(self) -> None:
            self.changed_for_archive = self.changed_for_retrieve = True
            self.upload_refused = False

        def _not_uploaded(self) -> list[str]:
            m = self.model
            return [p for p, data in sorted(m.files.items()) if m.uploaded.get(p) != sha256(data)]

        def _landing_complete(self) -> bool:
            prefix = landing_prefix(self.model.pid)
            sizes = multipart.object_sizes(s3, landing_bucket, prefix)
            return all(sizes.get(prefix + p) == len(data) for p, data in self.model.files.items())

        @precondition(lambda self: self._not_uploaded() and not self.upload_refused)
        @rule(mishap=st.sampled_from([None, "abort", "abort naming another file", "oversize part"]))
        @step
        def upload(self, mishap):
            """Upload the files not uploaded yet; first, on one of them, an upload given up (aborted, or aborted
            naming another listed file) or a part PUT with 1 MiB more than the file has."""
            if mishap == "oversize part":
                self._oversize_part(self._not_uploaded()[0])
            elif mishap:
                self._abandoned_upload(self._not_uploaded()[0], wrong_path=mishap != "abort")
            self._upload_missing(self.model)

        def _abandoned_upload(self, path: str, wrong_path: bool) -> None:
            m = self.model
            answer = self._start(m, path)
            if answer.status_code != 200 or not answer.json()["files"][0].get("uploadId"):
                return
            [plan] = answer.json()["files"]
            if plan["urls"]:
                httpx.put(plan["urls"][0]["url"], content=m.files[path], timeout=60)
            others = [p for p in sorted(m.files) if p != path]
            named = others[0] if wrong_path and others else path
            aborted = self._api(
                "POST", "/uploads/abort", json={"pid": m.pid, "path": named, "uploadId": plan["uploadId"]}
            )
            COUNTERS.count(f"abort: {aborted.status_code}")

        def _oversize_part(self, path: str) -> None:
            """A part PUT with 1 MiB more than the file has: the file must never be assembled from it."""
            m = self.model
            answer = self._start(m, path)
            if answer.status_code != 200 or not answer.json()["files"][0].get("urls"):
                return
            [plan] = answer.json()["files"]
            put = httpx.put(plan["urls"][0]["url"], content=m.files[path] + os.urandom(MIB), timeout=60)
            COUNTERS.count(f"oversize part PUT: {put.status_code}")
            if put.status_code == 200:
                done = self._api(
                    "POST",
                    "/uploads/complete",
                    json={
                        "pid": m.pid,
                        "path": path,
                        "uploadId": plan["uploadId"],
                        "parts": [{"partNumber": 1, "etag": put.headers["ETag"]}],
                    },
                )
                assert done.status_code != 200, (
                    f"{m.pid} {path}: a part of {len(m.files[path]) + MIB} bytes completed a file of {plan['size']}"
                )
            # The uploader gives up on it, as the API's 422 tells it to.
            self._api("POST", "/uploads/abort", json={"pid": m.pid, "path": path, "uploadId": plan["uploadId"]})

        @precondition(lambda self: not self._not_uploaded() and not self.finalized)
        @rule(archive=st.booleans())
        @step
        def finalize(self, archive):
            """Finalize the upload; with `archive`, the archive job it creates is run."""
            self.finalized = True
            answer = self._api("POST", "/uploads/finalize", json={"pid": self.model.pid, "archive": archive})
            COUNTERS.count(f"finalize: {answer.status_code}")
            if answer.status_code == 200:
                self._changed()
            if answer.status_code == 200 and answer.json().get("jobId"):
                self._run_archival(answer.json()["jobId"])

        @precondition(lambda self: self.changed_for_archive)
        @rule()
        @step
        def archive(self):
            self._run_archival(pipeline.new_job("archive", [self.model.pid]))

        @precondition(lambda self: self.model.registrations and self.changed_for_retrieve)
        @rule()
        @step
        def retrieve(self):
            m = self.model
            self.changed_for_retrieve = False
            job_id = pipeline.new_job("retrieve", [m.pid])
            retrieve_datasets_flow(job_id=job_id, return_state=True)
            job = pipeline.job(job_id)
            status = job["jobStatusMessage"]
            COUNTERS.count(f"retrieve job: {status}")
            assert status in FINAL_JOB_STATUSES, f"retrieve job {job_id} left {status!r} after its run ended"
            if status != "finishedSuccessful":
                return
            registered = {(f.path, f.chk) for d in scicat.get_datablocks(m.pid) for f in d.data_file_list}
            for entry in job["jobResultObject"]["result"]:
                data = httpx.get(entry["url"], timeout=60).raise_for_status().content
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    for member in tar.getmembers():
                        got = (member.name, sha256(tar.extractfile(member).read()))
                        assert got in registered, f"{m.pid}: retrieved {member.name} is in no registered datablock"

        @precondition(lambda self: self.model.registrations)
        @rule()
        @step
        def owner_replaces_lifecycle(self):
            """The owner's ordinary PATCH: SciCat replaces the whole lifecycle with what is sent."""
            self.upload_refused = False
            answer = httpx.patch(
                f"{pipeline.scicat_dev.url}/api/v3/datasets/{quote(self.model.pid, safe='')}",
                json={"datasetlifecycle": {"retrievable": True}},
                headers={"Authorization": f"Bearer {owner.token}"},
                timeout=30,
            )
            COUNTERS.count(f"owner PATCH: {answer.status_code}")

        @rule(name=st.sampled_from("az"), seed=st.integers(0, 2**16), size=st.sampled_from(FILE_SIZES))
        @step
        def owner_adds_a_file(self, name, seed, size):
            """A new file, named to sort before or after the others (`f<n>.bin`), listed in a new origdatablock;
            then every file not in the landing zone is uploaded."""
            m = self.model
            self.finalized = False
            path = f"{name}{len(m.files) + 1}.bin"
            m.files[path] = content(seed, size)
            self._add_origdatablock(m, [path])
            self._upload_missing(m)

        @rule(which=st.integers(0, 3), other_bytes=st.booleans(), seed=st.integers(0, 2**16))
        @step
        def owner_uploads_a_file_again(self, which, other_bytes, seed):
            """A file uploaded again: the same bytes, or other bytes of another size (listed in a new
            origdatablock, as an ingestor registers a new version); then every file not in the landing zone."""
            m = self.model
            self.finalized = False
            path = sorted(m.files)[which % len(m.files)]
            if other_bytes:
                old = len(m.files[path])
                m.files[path] = content(seed, next(s for s in (*FILE_SIZES, old + 4 * KIB) if s != old))
                self._add_origdatablock(m, [path])
            self._upload_missing(m)

        @precondition(lambda self: self._landing_complete())
        @rule(point=st.sampled_from(KILL_POINTS), nth=st.integers(1, 2))
        @step
        def killed_archival(self, point, nth):
            """An archival killed with SIGKILL at `point`, then recovered as the recovery automation does."""
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
            from prefect.states import Crashed

            from archiver.flows.recovery import recover_job

            self._changed()
            job_id = pipeline.new_job("archive", [self.model.pid])
            child = subprocess.run(
                [sys.executable, "-c", KILLED_ARCHIVAL, job_id, point, str(nth)], capture_output=True, timeout=300
            )
            COUNTERS.count(f"killed archival: exit {child.returncode}")
            if child.returncode != -9:  # the point was not reached: the job ran to its end
                assert self._job_status(job_id) in FINAL_JOB_STATUSES, child.stderr.decode()[-3000:]
                return
            with get_client(sync_client=True) as client:
                [run] = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"archive-job-{job_id}"]))
                )
                # What the runner reports when the flow-run process exits; its trigger then starts recover_job.
                client.set_flow_run_state(run.id, Crashed(message="Flow run process exited with signal 9"), force=True)
            recover_job(flow_run_id=str(run.id))
            status = self._job_status(job_id)
            COUNTERS.count(f"recovered job: {status}")
            assert status in FINAL_JOB_STATUSES, f"job {job_id} {status!r} after the recovery"

        # --- invariants ----------------------------------------------------------------------------------------

        @invariant()
        def archive_invariants(self):
            started = time.monotonic()
            registered = {m.pid: [d.to_wire() for d in scicat.get_datablocks(m.pid)] for m in self.models}
            self.registered_datablocks_unchanged_on_the_lts(registered)
            self.no_datablock_registered_twice(registered)
            self.listed_files_archived_with_their_checksums(registered)
            self.landing_zone_kept_until_archived(registered)
            self.upload_budget_holds()
            self.no_partial_files()
            COUNTERS.seconds["checks"] = COUNTERS.seconds.get("checks", 0.0) + time.monotonic() - started

        def registered_datablocks_unchanged_on_the_lts(self, registered):
            now_sha, now_files = {}, {}
            for m in self.models:
                for d in registered[m.pid]:
                    archive_id = d["archiveId"]
                    tar = lts_layout.datablock_path(lts_root, archive_id)
                    assert tar.is_file(), f"dataset {m.pid}: registered datablock {archive_id} is not on the LTS"
                    manifest = read_manifest(PosixLtsStore(lts_root), archive_id)
                    data = tar.read_bytes()
                    assert hashlib.new(manifest.chkAlg, data).hexdigest() == manifest.chk, (
                        f"dataset {m.pid}: datablock {archive_id} differs from its manifest's checksum"
                    )
                    listed = sorted((f["path"], f["size"], f["chk"]) for f in d["dataFileList"])
                    assert listed == sorted((f.path, f.size, f.chk) for f in manifest.dataFileList), (
                        f"dataset {m.pid}: SciCat's record of {archive_id} and its manifest differ"
                    )
                    now_sha[archive_id] = sha256(data)
                    now_files[archive_id] = {(f["path"], f["chk"]) for f in d["dataFileList"]}
                    before = self.registered_sha.get(archive_id)
                    assert before is None or before == now_sha[archive_id], (
                        f"dataset {m.pid}: registered datablock {archive_id} was overwritten on the LTS (tar sha256 "
                        f"{before} when first seen registered, now {now_sha[archive_id]}); files it held: "
                        f"{sorted(self.registered_files[archive_id])}; files it holds: {sorted(now_files[archive_id])}"
                    )
            for archive_id in set(self.registered_sha) - set(now_sha):  # registration gone: its bytes must be kept
                pid = next(m.pid for m in self.models if naming.archive_id_of_dataset(m.pid, archive_id))
                landing = {(p, sha256(b)) for p, b in self._landing(pid).items()}
                elsewhere = set().union(*now_files.values()) if now_files else set()
                lost = sorted(self.registered_files[archive_id] - landing - elsewhere)
                assert not lost, (
                    f"dataset {pid}: registration of datablock {archive_id} removed while its files "
                    f"{lost} are neither in the landing zone nor in another registered datablock"
                )
            self.registered_sha, self.registered_files = now_sha, now_files

        def no_datablock_registered_twice(self, registered):
            for m in self.models:
                ids = [d["archiveId"] for d in registered[m.pid]]
                assert len(ids) == len(set(ids)), f"dataset {m.pid}: a datablock is registered twice: {sorted(ids)}"

        def listed_files_archived_with_their_checksums(self, registered):
            for m in self.models:
                now = frozenset(
                    (d["archiveId"], tuple(sorted((f["path"], f["chk"]) for f in d["dataFileList"])))
                    for d in registered[m.pid]
                )
                if now != m.registrations:
                    m.registrations = now
                    m.listed_at_registration = (
                        {p: chk for p, (_, chk) in self._listing(m.pid).items() if chk} if now else {}
                    )
                held = {pair for d in registered[m.pid] for pair in ((f["path"], f["chk"]) for f in d["dataFileList"])}
                for path, chk in sorted(m.listed_at_registration.items()):
                    assert (path, chk) in held, (
                        f"dataset {m.pid} is archived, but file {path} (chk {chk} in its origdatablocks) is in no "
                        f"registered datablock with that checksum; registered: {sorted(held)}"
                    )

        def landing_zone_kept_until_archived(self, registered):
            for m in self.models:
                held = {(f["path"], f["chk"]) for d in registered[m.pid] for f in d["dataFileList"]}
                landing = None
                for path, digest in sorted(m.uploaded.items()):
                    if (path, digest) in held:
                        continue
                    landing = self._landing(m.pid) if landing is None else landing
                    assert path in landing and sha256(landing[path]) == digest, (
                        f"dataset {m.pid}: uploaded file {path} (sha256 {digest}) is in no registered datablock and "
                        f"no longer in the landing zone ({'other bytes' if path in landing else 'deleted'})"
                    )

        def upload_budget_holds(self):
            used = sum(obj["Size"] for obj in s3.list_objects_v2(Bucket=landing_bucket).get("Contents", []))
            for upload in s3.list_multipart_uploads(Bucket=landing_bucket).get("Uploads", []):
                parts = s3.list_parts(Bucket=landing_bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                stored = sum(p["Size"] for p in parts.get("Parts", []))
                used += max(stored, self.declared.get(upload["UploadId"], 0))
            assert used <= BUDGET_BYTES, f"the landing zone holds {used} bytes, over its budget of {BUDGET_BYTES}"

        def no_partial_files(self):
            left = sorted(str(p.relative_to(lts_root)) for p in lts_root.rglob(f"*{naming.PARTIAL_SUFFIX}"))
            assert not left, f"half-written files left after a finished job: {left}"

        def teardown(self):
            # The next example starts with an empty landing zone: no leftover counts against its budget.
            for upload in s3.list_multipart_uploads(Bucket=landing_bucket).get("Uploads", []):
                s3.abort_multipart_upload(Bucket=landing_bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=landing_bucket).get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=landing_bucket, Delete={"Objects": [{"Key": k} for k in keys]})

    return ArchiveMachine


# A failing run also shrinks its counterexample (Hypothesis stops shrinking after 5 minutes): more than the 600 s.
@pytest.mark.timeout(2400)
def test_archive_invariants_hold_whatever_owners_jobs_and_crashes_do(pipeline, invariants_api):
    pipeline.set_settings(
        UPLOAD_PART_SIZE_MB=5,
        UPLOAD_LANDINGZONE_BUDGET_GB=BUDGET_BYTES / 1e9,
        ARCHIVER_DATASET_CONCURRENCY=1,
        ARCHIVER_DATABLOCK_CONCURRENCY=1,
        ARCHIVER_CRASH_RETRIES=0,
    )
    owner = Uploader(pipeline, invariants_api, f"owner-{uuid.uuid4().hex[:8]}", [OWNER_GROUP])
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            make_machine(pipeline, owner),
            settings=settings(
                max_examples=MAX_EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        seconds = {name: round(s) for name, s in sorted(COUNTERS.seconds.items())}
        print(
            f"\narchive invariants: {COUNTERS.examples} example(s), {COUNTERS.steps} step(s) in "
            f"{time.monotonic() - started:.0f} s; seconds per rule {seconds}; invariant checks "
            f"{COUNTERS.seconds.get('checks', 0):.0f} s; outcomes: {dict(sorted(COUNTERS.outcomes.items()))}"
        )
