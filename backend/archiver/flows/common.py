"""What the archival, retrieval and test-dataset flows share: connections, SciCat reporting, progress, parallelism.

Settings are read once per job run (`load_run_configuration`) and handed to
each dataset's subflow as a parameter; credentials come from Prefect Secret
blocks and never travel as parameters (parameters are stored by Prefect).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast
from uuid import UUID

import httpx
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from archiver.config.runtime import RunConfiguration
from archiver.config.secrets import ARCHIVER_S3, PRESIGN_S3, S3Account, read_secret_block
from archiver.errors import ArchiverError
from archiver.flows.outage import call_prefect, retry_refused_connections
from archiver.packing.planning import ListedFile
from archiver.packing.records import ListedChecksum, listed_algorithm
from archiver.packing.registered import ArchiveDifferences, ArchiveOnRecord, archive_differences, check_registered
from archiver.packing.sources import Prefetch
from archiver.scicat.client import ScicatClient, ScicatCredentials, ScicatError
from archiver.scicat.models import ArchiveStatus, Datablock, DataFile
from archiver.storage.s3 import S3Credentials, s3_client

T = TypeVar("T")
R = TypeVar("R")

retry_refused_connections()  # every flow module imports this one: Prefect clients ride out a restart


@dataclass
class Connections:
    """Clients one job run and its dataset subflows work with; never passed as a Prefect parameter."""

    s3: Any  # the archiver account's client
    presign_credentials: S3Credentials  # sign download URLs only (read access to the retrieval bucket)
    scicat: ScicatClient
    s3_credentials: S3Credentials  # the archiver account's (the API signs upload URLs with it)


# The connections of the run being executed: its dataset subflows (same process, same configuration) use them
# instead of loading the secret blocks, making an S3 client and logging in to SciCat once more per dataset.
_OPEN: contextvars.ContextVar[tuple[RunConfiguration, Connections] | None] = contextvars.ContextVar(
    "archiver_connections", default=None)


def _s3_pool_size(config: RunConfiguration) -> int:
    """Connections the S3 client may hold: every datablock worked on at once prefetches on its own threads."""
    archiver = config.settings.archiver
    return max(16, archiver.dataset_concurrency * archiver.datablock_concurrency * (Prefetch.threads + 1) + 4)


def open_connections(config: RunConfiguration) -> Connections:
    """New clients for `config`; the caller closes `scicat` (flows use `connect`)."""
    def secret(name: str) -> str:
        return call_prefect(partial(read_secret_block, name), f"load secret block {name}")

    def s3_account(account: S3Account) -> S3Credentials:
        return S3Credentials(secret(account.user.prefect_block), secret(account.password.prefect_block))

    minio = config.settings.minio
    scicat_credentials = ScicatCredentials(secret("scicat-user"), secret("scicat-password"))
    archiver_credentials = s3_account(ARCHIVER_S3)
    return Connections(
        s3=s3_client(minio.endpoint, minio.region, archiver_credentials, _s3_pool_size(config)),
        presign_credentials=s3_account(PRESIGN_S3),
        scicat=ScicatClient(config.settings.scicat, scicat_credentials),
        s3_credentials=archiver_credentials,
    )


@contextlib.contextmanager
def connect(config: RunConfiguration) -> Iterator[Connections]:
    """The clients for `config`: those of the enclosing run when it has the same configuration, else new ones,
    closed when the block ends."""
    outer = _OPEN.get()
    if outer is not None and outer[0] == config:
        yield outer[1]
        return
    connections = open_connections(config)
    token = _OPEN.set((config, connections))
    try:
        yield connections
    finally:
        _OPEN.reset(token)
        connections.scicat.close()


def exception_of(state) -> BaseException | None:
    """The exception a failed task run state holds (None if it holds none)."""
    try:
        state.result()
    except BaseException as e:
        return e
    return None


def scicat_may_recover(task, task_run, state) -> bool:
    """Retry SciCat calls only when SciCat was unreachable or unavailable, never on a 4xx answer."""
    error = exception_of(state)
    if isinstance(error, ScicatError):
        return error.status_code is None or error.status_code >= 500
    return isinstance(error, httpx.TransportError)


@task(
    name="report-to-scicat",
    task_run_name="scicat: {what}",
    retries=4,
    retry_delay_seconds=[5, 15, 30, 60],
    retry_condition_fn=scicat_may_recover,
    cache_policy=NO_CACHE,
)
def scicat_call(what: str, call: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """One SciCat call as a task: visible in the UI, retried while SciCat is down (the client retries briefly too)."""
    return call(*args, **kwargs)


ARCHIVED_LIFECYCLE = {
    "archive_status_message": ArchiveStatus.DATASET_ON_ARCHIVE_DISK, "archivable": False, "retrievable": True,
}


@dataclass(frozen=True)
class OnRecord:
    registered: list[Datablock]  # the dataset's datablocks in SciCat
    listed: list[ListedFile]  # every file entry of its origdatablocks
    archive: ArchiveOnRecord  # what the registered datablocks amount to on the LTS

    def registered_wire(self) -> list[dict[str, Any]]:
        return [d.to_wire() for d in self.registered]

    def differences(self) -> ArchiveDifferences:
        return archive_differences(self.registered_wire(), self.listed)


def dataset_on_record(pid: str, config: RunConfiguration, connections: Connections) -> OnRecord:
    """What SciCat and the LTS say about a dataset's archive (packing.registered)."""
    scicat = connections.scicat
    registered = _one_per_archive_id(scicat_call(f"datablocks of {pid}", scicat.get_datablocks, pid))
    origdatablocks = scicat_call(f"origdatablocks of {pid}", scicat.get_origdatablocks, pid)
    listed = [listed_file(f, block.chk_alg) for block in origdatablocks for f in block.data_file_list]
    archive = check_registered(config.settings.lts.storage_root, pid, [d.to_wire() for d in registered],
                               [f.path for f in listed])
    return OnRecord(registered, listed, archive)


def _one_per_archive_id(datablocks: list[Datablock]) -> list[Datablock]:
    """A datablock SciCat holds twice (a registration repeated by an older archiver) counts once, so it is
    retrieved once; the audit reports the duplicates (`duplicate-registration`)."""
    first: dict[str, Datablock] = {}
    for datablock in datablocks:
        first.setdefault(datablock.archive_id, datablock)
    return list(first.values())


def listed_file(data_file: DataFile, chk_alg: str | None) -> ListedFile:
    """An origdatablock's file entry; its checksum kept when its algorithm is one we can compute."""
    algorithm = listed_algorithm(chk_alg)
    checksum = ListedChecksum(algorithm=algorithm, value=data_file.chk) if algorithm and data_file.chk else None
    return ListedFile(data_file.path.removeprefix("./"), data_file.size, checksum)


class RunCancelled(ArchiverError):
    """The run (or a run above it) is being cancelled: stop before any further irreversible step."""


class RunNotOwned(ArchiverError):
    """The run (or a run above it) is no longer running in Prefect's eyes: taken for crashed while frozen
    or cut off, its job may already be another run's. It stops without touching SciCat, the LTS or the
    landing zone again; the run that owns the job finishes it."""


def raise_if_cancelled(max_wait_s: float = 300) -> None:
    """Check this flow run and the runs above it before an irreversible step: a cancellation hook may
    already be cleaning up in another process (RunCancelled), or the run was marked crashed and its job
    handed to another run (RunNotOwned). Either way no step that registers data, reports to SciCat or
    deletes the landing zone may follow.

    While the Prefect API is unreachable the check is repeated for up to `max_wait_s`; if it stays
    down, PrefectUnavailable fails the dataset (its verified datablocks stay for a re-run): going on
    without knowing whether the run was cancelled could race a cleanup."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    with get_client(sync_client=True) as client:
        while flow_run_id is not None:
            flow_run = call_prefect(partial(client.read_flow_run, flow_run_id), "check for cancellation", max_wait_s)
            state = flow_run.state
            if state and (state.is_cancelling() or state.is_cancelled()):
                raise RunCancelled(f"flow run {flow_run.name} is {str(state.name).lower()}")
            if state and not state.is_running():
                raise RunNotOwned(f"flow run {flow_run.name} is {state.name} in Prefect, no longer running; "
                                  "stopping without further changes (its job is another run's now)")
            parent_task = flow_run.parent_task_run_id
            flow_run_id = call_prefect(partial(client.read_task_run, parent_task), "check for cancellation",
                                       max_wait_s).flow_run_id if parent_task else None


class OwnershipCheck:
    """`raise_if_cancelled` at most every `interval_s` (before each datablock: a woken run stops writing soon,
    without an API round trip per datablock)."""

    def __init__(self, interval_s: float = 10.0):
        self._interval_s = interval_s
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if time.monotonic() - self._last < self._interval_s:
                return
            self._last = time.monotonic()
        raise_if_cancelled()


def run_bounded(function: Callable[[T], R], items: Iterable[T], max_workers: int) -> list[R | BaseException]:
    """Apply `function` to each item, at most `max_workers` at once, inside the current Prefect run context.

    Returns each item's result or the exception it raised, in the order of `items`."""
    items = list(items)
    if not items:
        return []

    def run(item: T) -> R | BaseException:
        try:
            return function(item)
        except Exception as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items)))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, run, item) for item in items]
        return [future.result() for future in futures]


def run_bounded_or_raise(function: Callable[[T], R], items: Iterable[T], max_workers: int) -> list[R]:
    """`run_bounded`, raising the first error once every item has finished (none is left running)."""
    results: list[R] = []
    for outcome in run_bounded(function, items, max_workers):
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


class ProgressReporter:
    """A Prefect progress artifact fed by byte counts from worker threads, updated at most every few seconds.
    Its description ends in `(N bytes)`, the total, so a watcher can show bytes, rate and time left.

    Updates are sent from a background thread, one at a time, so a slow or unreachable Prefect API
    never holds up the bytes (an update due while one is still being sent is skipped)."""

    def __init__(self, total_bytes: int, description: str, interval_s: float = 2.0):
        self._total = max(total_bytes, 1)
        self._done = 0
        self._lock = threading.Lock()
        self._interval_s = interval_s
        self._last_update = 0.0
        self._sending = False
        self._artifact_id: UUID | None = None
        try:
            # Prefect types the call as sync or async; in a flow run's thread it is sync.
            self._artifact_id = cast(UUID, create_progress_artifact(
                progress=0.0, description=f"{description} ({self._total} bytes)"))
        except Exception as e:  # progress is for humans; never fail a transfer over it
            get_run_logger().warning("progress artifact not created (Prefect API: %s); progress is not shown", e)

    def add(self, n: int) -> None:
        with self._lock:
            self._done += n
            now = time.monotonic()
            if now - self._last_update < self._interval_s:
                return
            self._last_update = now
            progress = self.percent()
        self._update(progress)

    def percent(self) -> float:
        return min(100.0, 100.0 * self._done / self._total)

    def finish(self, wait_s: float = 10.0) -> None:
        """Report 100 %, after the update being sent (if any) is through or `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        while self._sending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._update(100.0)

    def _update(self, progress: float) -> None:
        with self._lock:
            artifact_id = self._artifact_id
            if artifact_id is None or self._sending:
                return
            self._sending = True
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._send, artifact_id, progress), daemon=True).start()

    def _send(self, artifact_id: UUID, progress: float) -> None:
        try:
            update_progress_artifact(artifact_id, progress=progress)
        except Exception as e:  # progress is for humans; never fail a transfer over it
            get_run_logger().debug("progress artifact not updated: %s", e)
        finally:
            with self._lock:
                self._sending = False
