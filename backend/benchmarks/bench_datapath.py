"""Data path benchmark: prints figures beside plain boto3 baselines, asserts nothing.

Starts a SeaweedFS S3 server (subprocess; `--s3 moto` for moto's). For each file shape (default 8 x 64 MiB,
32 x 64 MiB, 1000 x 1 MiB, 20000 x 64 KiB), one after the other, it fills a
landing-zone bucket, then in this process:
  - archive+verify: lists and plans the dataset, writes its datablocks to a local LTS
    folder and verifies each (datablocks worked on --datablock-concurrency at a time,
    as the archival flow does with ARCHIVER_DATABLOCK_CONCURRENCY),
  - verify: the datablocks verified again (page cache dropped, same concurrency),
  - audit: the LTS audit's fixity pass (issue 15) over every datablock, one at a time as its
    default tag limit allows: inventory, oldest first, re-read, record (no SciCat),
  - retrieve: checks and uploads the datablocks into a retrieval bucket (same concurrency),
  - raw download: every object, one after the other, to the same filesystem, then fsync of
    every file and the folder (boto3 download_file from 8 MiB up, a plain get_object below:
    download_file's per-call HEAD and thread pool, or an fsync per file, would make small
    files a slow baseline),
  - parallel raw download: every object with one GET each, as many in flight as the engine
    has for files of that size (baselines.engine_gets_in_flight: 2 for 64 MiB files, 16 for
    small ones, with 2 datablocks at a time), then the same fsyncs; archive+verify's targets
    are set against this one, which had the same parallelism to work with,
  - plain upload: boto3 upload_file of the datablocks, one after the other (retrieve and plain upload
    run in turn twice; the faster of each is kept),
and removes the shape's objects and files before the next. It prints MB/s (MiB of
dataset files per second), the ratios against the targets of issues 16 and 27 (met or not met,
also listed together after the table), and the peak
RSS of this process per phase (the S3 server keeps objects in its own process, which is
not counted); the growth of each phase's peak above its start between the 512 MiB and
2 GiB shapes shows whether memory depends on dataset size. Before each phase freed
memory is handed back to the OS (malloc_trim), so a phase's peak is not inflated by
what an earlier phase left.

Then the job overhead (backend/benchmarks/job_overhead.py): the local pipeline of `archiver dev`
archives 1 MiB datasets through SciCat jobs (--overhead-jobs, default 3) and prints where each
job's seconds went, as Prefect recorded them; then a 32 x 64 MiB job, set beside the engine
alone on that shape from the table above (about 2 more minutes).

    .venv/bin/python backend/benchmarks/bench_datapath.py [--shapes 8x64M,32x64M,1000x1M,20000x64K] [--s3 moto]
    .venv/bin/python backend/benchmarks/bench_datapath.py --engine-only --large-job 320x64M --overhead-jobs 1
      (a 20 GiB job beside the engine alone, without the baselines; ~45 GiB free in the temp folder)

About 10-15 minutes on 2 cores shared with other work (measured on moto), 3-7 of them for the 20000
small files (moto answers ~150 requests/s: filling it, archiving and the raw download make 60000);
needs ~6 GiB free in the temp folder. `--shapes` runs fewer or smaller shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import baselines  # beside this file
import bench_s3  # beside this file
import job_overhead  # beside this file

from archiver.packing import audit, naming
from archiver.packing.archive import archive_datablock, verify_datablock
from archiver.packing.planning import list_dataset_files, plan_datablocks
from archiver.packing.retrieve import retrieve_datablock
from archiver.storage.posix_store import PosixLtsStore
from archiver.storage.s3 import S3Credentials, delete_prefix, s3_client

KiB = 1024
MiB = 1024 * KiB
REGION = "eu-west-1"
DEFAULT_SHAPES = "8x64M,32x64M,1000x1M,20000x64K"


@dataclass(frozen=True)
class Shape:
    files: int
    size: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        count, _, size = text.strip().lower().partition("x")
        units = {"k": KiB, "m": MiB, "g": 1024 * MiB}
        try:
            return cls(int(count), int(size[:-1]) * units[size[-1]])
        except (ValueError, KeyError, IndexError):
            raise argparse.ArgumentTypeError(
                f"shape {text!r} is not COUNTxSIZE with SIZE ending in K, M or G (e.g. 1000x1M)"
            ) from None

    @property
    def total(self) -> int:
        return self.files * self.size

    def __str__(self) -> str:
        size = f"{self.size // MiB} MiB" if self.size >= MiB else f"{self.size // KiB} KiB"
        return f"{self.files} x {size}"


# Issue 16: a job of about 2 GiB spends at most 10% more than the engine alone on the same data.
LARGE_JOB = Shape(32, 64 * MiB)


class PeakRss:
    """Samples this process's resident set every few milliseconds; `peak` is the highest seen since start."""

    def __init__(self, interval_s: float = 0.005):
        self._interval = interval_s
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def release_freed_memory() -> None:
    """Between phases: hand memory freed by the previous phase back to the OS, so each phase's peak is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Figure:
    seconds: float
    peak_rss: int
    start_rss: int


def timed(fn) -> Figure:
    release_freed_memory()
    with PeakRss() as rss:
        start_rss = rss.current()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return Figure(seconds, rss.peak, start_rss)


def fill_landing_zone(s3, bucket: str, pid: str, shape: Shape) -> None:
    prefix = naming.landing_prefix(pid)
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: s3.put_object(
                    Bucket=bucket, Key=f"{prefix}run/frame_{i:05d}.raw", Body=os.urandom(shape.size)
                ),
                range(shape.files),
            )
        )


class Run:
    """One shape: fill, time the engine and the baselines, clean up."""

    def __init__(self, s3, buckets: dict[str, str], work: Path, shape: Shape, target_mb: int, concurrency: int):
        self.s3, self.buckets, self.shape = s3, buckets, shape
        self.target_mb, self.concurrency = target_mb, concurrency
        self.pid = f"20.500.11935/bench-{shape.files}x{shape.size}"
        self.lts = work / "lts"
        self.lts_store = PosixLtsStore(self.lts)
        self.download_dir = work / "baseline"
        self.blocks = []
        self.figures: dict[str, Figure] = {}

    def run(self, engine_only: bool = False) -> None:
        """Every phase; with `engine_only`, archive+verify alone (the engine a job is set beside)."""
        self.lts.mkdir()
        self.download_dir.mkdir()
        fill_landing_zone(self.s3, self.buckets["landing"], self.pid, self.shape)
        try:
            self.figures["archive+verify"] = timed(self.archive_and_verify)
            if engine_only:
                return
            self.figures["verify"] = timed(self.verify_again)
            self.figures["audit"] = timed(self.audit_fixity)
            self.figures["raw download"] = timed(self.raw_download)
            self.reset_download_dir()
            self.figures["parallel download"] = timed(self.parallel_download)
            # Both moved through the same S3 server, whose speed on a shared machine varies from run to run:
            # taken in turn, twice, and the faster of each kept.
            for _ in range(2):
                self.keep_faster("retrieve", timed(self.retrieve))
                self.keep_faster("plain upload", timed(self.plain_upload))
        finally:
            for bucket in self.buckets.values():
                delete_prefix(self.s3, bucket, "")
            shutil.rmtree(self.lts)
            shutil.rmtree(self.download_dir)

    def keep_faster(self, phase: str, figure: Figure) -> None:
        """The time of the phase's faster run, the RSS of the run whose peak rose most above its start."""
        earlier = self.figures.get(phase)
        if earlier is not None:
            faster = min(earlier, figure, key=lambda f: f.seconds)
            hungrier = max(earlier, figure, key=lambda f: f.peak_rss - f.start_rss)
            figure = Figure(faster.seconds, hungrier.peak_rss, hungrier.start_rss)
        self.figures[phase] = figure

    def archive_and_verify(self) -> None:
        landing = self.buckets["landing"]
        self.blocks = plan_datablocks(self.pid, list_dataset_files(self.s3, landing, self.pid), self.target_mb * MiB)

        def store(block):
            archive_datablock(self.s3, landing, block, self.lts_store)
            verify_datablock(self.lts_store, block.archive_id)

        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(store, self.blocks))

    def verify_again(self) -> None:
        """Verification alone, the datablocks read back from the LTS (page cache dropped), as after archival."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(lambda b: verify_datablock(self.lts_store, b.archive_id), self.blocks))

    def audit_fixity(self) -> None:
        """The LTS audit's fixity pass over every datablock, but for SciCat's records: inventory, oldest first,
        re-read one at a time (its tag limit's default), record each result."""
        datasets, _ = audit.inventory(self.lts_store)
        for block in audit.select_for_fixity(audit.stored_datablocks(self.lts_store, datasets), None):
            verify_datablock(self.lts_store, block.archive_id)
            audit.record_verification(self.lts_store, block.archive_id, datetime.now(UTC), [])

    def retrieve(self) -> None:
        with ThreadPoolExecutor(self.concurrency) as pool:
            list(
                pool.map(
                    lambda b: retrieve_datablock(
                        self.lts_store, b.archive_id, self.s3, self.buckets["retrieval"], file_timeout_s=60
                    ),
                    self.blocks,
                )
            )

    def dataset_objects(self) -> list[tuple[str, int]]:
        return [(f.key, f.size) for f in list_dataset_files(self.s3, self.buckets["landing"], self.pid)]

    def reset_download_dir(self) -> None:
        shutil.rmtree(self.download_dir)
        self.download_dir.mkdir()

    def raw_download(self) -> None:
        baselines.sequential_download(self.s3, self.buckets["landing"], self.dataset_objects(), self.download_dir)

    @property
    def gets_in_flight(self) -> int:
        return baselines.engine_gets_in_flight(self.shape.size, len(self.blocks), self.concurrency)

    def parallel_download(self) -> None:
        baselines.parallel_download(
            self.s3, self.buckets["landing"], self.dataset_objects(), self.download_dir, self.gets_in_flight
        )

    def plain_upload(self) -> None:
        baselines.plain_upload(
            self.s3,
            self.buckets["plain"],
            [(self.lts / b.archive_id, b.archive_id) for b in self.blocks],
        )

    def rate(self, phase: str) -> float:
        return self.shape.total / MiB / self.figures[phase].seconds

    def archive_ratio(self) -> float:
        return self.figures["parallel download"].seconds / self.figures["archive+verify"].seconds

    def retrieve_ratio(self) -> float:
        return self.figures["plain upload"].seconds / self.figures["retrieve"].seconds

    def row(self) -> str:
        f = self.figures
        archive_target = baselines.ARCHIVE_TARGETS.get(self.shape.size)
        retrieve_target = baselines.RETRIEVE_TARGETS.get(self.shape.size)
        return (
            f"{str(self.shape):<16} {len(self.blocks):>3} "
            f"{self.rate('archive+verify'):>8.1f} {self.rate('raw download'):>8.1f} "
            f"{self.rate('parallel download'):>8.1f} {self.gets_in_flight:>3} {self.archive_ratio():>6.2f}x "
            f"{f'>= {archive_target:.1f}x' if archive_target else '':>8} "
            f"{self.rate('retrieve'):>8.1f} {self.rate('plain upload'):>8.1f} {self.retrieve_ratio():>6.2f}x "
            f"{f'>= {retrieve_target:.1f}x' if retrieve_target else '':>8} "
            f"{f['archive+verify'].peak_rss / MiB:>8.0f} {f['retrieve'].peak_rss / MiB:>8.0f} "
            f"{f['archive+verify'].start_rss / MiB:>6.0f}"
        )

    def target_lines(self) -> list[str]:
        lines = []
        for what, ratio, baseline, target in (
            (
                "archive+verify",
                self.archive_ratio(),
                "parallel raw download",
                baselines.ARCHIVE_TARGETS.get(self.shape.size),
            ),
            ("retrieve", self.retrieve_ratio(), "plain upload", baselines.RETRIEVE_TARGETS.get(self.shape.size)),
        ):
            if target is not None:
                lines.append(
                    f"{str(self.shape):<16} {what:<15} {ratio:5.2f}x the {baseline:<22} "
                    f"target >= {target:.1f}x: {baselines.verdict(ratio, target)}"
                )
        return lines


HEADER = (
    f"{'shape':<16} {'blk':>3} {'archive':>8} {'seq dl':>8} {'par dl':>8} {'GET':>3} {'ratio':>7} {'target':>8} "
    f"{'retrieve':>8} {'upload':>8} {'ratio':>7} {'target':>8} {'RSS arch':>8} {'RSS retr':>8} {'start':>6}\n"
    f"{'':<16} {'':>3} {'MB/s':>8} {'MB/s':>8} {'MB/s':>8} {'':>3} {'/par dl':>7} {'':>8} {'MB/s':>8} {'MB/s':>8} "
    f"{'':>7} {'':>8} {'MiB':>8} {'MiB':>8} {'MiB':>6}"
)


def rss_growth_lines(runs: list[Run]) -> list[str]:
    """Peak RSS growth between the smallest and largest dataset of 64 MiB files (512 MiB -> 2 GiB by default),
    measured above each phase's starting RSS: the process also keeps what earlier phases left in malloc's
    pools (malloc_trim cannot return all of it), which is not the phase's own memory; both are printed."""
    big_files = sorted((r for r in runs if r.shape.size == 64 * MiB), key=lambda r: r.shape.total)
    if len(big_files) < 2 or big_files[0].shape.total == big_files[-1].shape.total:
        return []
    small, large = big_files[0], big_files[-1]
    lines = []
    for phase in ("archive+verify", "retrieve"):
        a, b = small.figures[phase], large.figures[phase]
        own = ((b.peak_rss - b.start_rss) - (a.peak_rss - a.start_rss)) / MiB
        lines.append(
            f"peak RSS growth {phase}, "
            f"{small.shape.total // MiB} MiB -> {large.shape.total // MiB} MiB: {own:+.1f} MiB "
            f"above the phase's start (target < 32 MiB); absolute peak {(b.peak_rss - a.peak_rss) / MiB:+.1f} MiB, "
            f"of which the start {(b.start_rss - a.start_rss) / MiB:+.1f} MiB"
        )
    return lines


def print_summary(runs: list[Run]) -> None:
    for line in rss_growth_lines(runs):
        print(line)
    print("\ntargets (issues 16 and 27), this run:", flush=True)
    for run in runs:
        for line in run.target_lines():
            print(line, flush=True)
    print("\nre-reading the LTS (issue 15): verification after archival, the audit's fixity pass", flush=True)
    for run in runs:
        print(f"{str(run.shape):<16} verify {run.rate('verify'):>8.1f} MB/s   audit {run.rate('audit'):>8.1f} MB/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes",
        default=DEFAULT_SHAPES,
        help=f"comma-separated COUNTxSIZE datasets, run in this order (default {DEFAULT_SHAPES})",
    )
    parser.add_argument(
        "--target-mb", type=int, default=200, help="datablock size, ARCHIVER_TARGET_SIZE_MB (default 200)"
    )
    parser.add_argument(
        "--datablock-concurrency",
        type=int,
        default=2,
        help="datablocks worked on at once, ARCHIVER_DATABLOCK_CONCURRENCY (default 2, as deployed)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="folder for the LTS and baseline copies (default: temp)"
    )
    parser.add_argument(
        "--overhead-jobs",
        type=int,
        default=3,
        help="1 MiB archive jobs whose phases are printed, under a local runner (default 3; 0: skip "
        "the job-overhead section, which also archives 32 x 64 MiB through a job)",
    )
    parser.add_argument(
        "--large-job",
        default="32x64M",
        help="shape of the job set beside the engine alone (default 32x64M, 2 GiB; 320x64M for 20 GiB)",
    )
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="of the table, only archive+verify of the --large-job shape (the job's comparison, without baselines)",
    )
    bench_s3.add_option(parser)
    args = parser.parse_args(argv)
    shapes = [Shape.parse(s) for s in args.shapes.split(",") if s.strip()]
    large_job = Shape.parse(args.large_job)
    if args.engine_only:
        shapes = [large_job]

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.work_dir, prefix="bench-datapath-")))
        credentials = S3Credentials("bench-access", "bench-secret")
        server = stack.enter_context(bench_s3.server(args.s3, work / "s3", credentials))
        s3 = s3_client(server.url, REGION, credentials)
        buckets = {role: f"bench-{role}" for role in ("landing", "retrieval", "plain")}
        for bucket in buckets.values():
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        print(
            f"data path benchmark ({args.s3} S3 at {server.url}, LTS and baseline copies in {work}); "
            f"datablocks <= {args.target_mb} MiB, {args.datablock_concurrency} at a time; "
            "MB/s = MiB of dataset files per second; RSS is this process's peak, not the S3 server's",
            flush=True,
        )
        print(HEADER, flush=True)
        runs = []
        for shape in shapes:
            run = Run(s3, buckets, work, shape, args.target_mb, args.datablock_concurrency)
            run.run(engine_only=args.engine_only)
            runs.append(run)
            if args.engine_only:
                print(f"{shape}: engine alone (archive+verify) {run.figures['archive+verify'].seconds:.1f} s")
            else:
                print(run.row(), flush=True)
        if not args.engine_only:
            print_summary(runs)
        stack.close()  # the data path's S3 server and files go before the pipeline starts its own
        if args.overhead_jobs > 0:
            print(
                "\njob overhead (issue 16, item 3): SciCat archive jobs under `archiver dev`'s local runner", flush=True
            )
            engine = next((r.figures["archive+verify"].seconds for r in runs if str(r.shape) == str(large_job)), None)
            with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="bench-overhead-") as tmp:
                for line in job_overhead.measure(
                    Path(tmp), args.overhead_jobs, (large_job.files, large_job.size / MiB), engine
                ):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
