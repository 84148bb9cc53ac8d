"""Data path benchmark: prints figures, asserts nothing.

Starts a moto S3 server (subprocess), fills a landing-zone bucket with a dataset
of N x 64 MiB random files, then in this process:
  - archives it into datablocks on a local LTS folder and verifies them,
  - retrieves the datablocks into a retrieval bucket,
  - runs the plain baselines on the same bytes: boto3 download_file of every
    object to the same filesystem + fsync, and boto3 upload_file of the datablocks.
It does this for a small and a large dataset (default 512 MiB and 2 GiB; the
engine runs for both before any baseline runs) and
prints MB/s and the peak RSS of this process (moto keeps objects in its own
process, which is not counted) per phase, plus the RSS growth between sizes.
Before each phase freed memory is handed back to the OS (malloc_trim), so a
phase's peak is not inflated by what an earlier phase left in malloc's pools.

    .venv/bin/python backend/benchmarks/bench_datapath.py [--small-files 8] [--large-files 32]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import tempfile
import threading
import time
from pathlib import Path

from archiver import local_services
from archiver.packing import naming
from archiver.packing.archive import archive_datablock, verify_datablock
from archiver.packing.planning import list_dataset_files, plan_datablocks
from archiver.packing.retrieve import retrieve_datablock
from archiver.storage.lts import fsync_dir
from archiver.storage.s3 import S3Credentials, s3_client

MiB = 1024 * 1024
FILE_SIZE = 64 * MiB
REGION = "eu-west-1"


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


def timed(fn):
    release_freed_memory()
    with PeakRss() as rss:
        start_rss = rss.current()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, rss.peak, start_rss


def fill_landing_zone(s3, bucket: str, pid: str, files: int) -> int:
    prefix = naming.landing_prefix(pid)
    for i in range(files):
        s3.put_object(Bucket=bucket, Key=f"{prefix}run/frame_{i:04d}.raw", Body=os.urandom(FILE_SIZE))
    return files * FILE_SIZE


class Dataset:
    def __init__(self, s3, buckets: dict[str, str], work: Path, files: int, target_mb: int):
        self.s3, self.buckets, self.files = s3, buckets, files
        self.pid = f"20.500.11935/bench-{files}"
        self.total = fill_landing_zone(s3, buckets["landing"], self.pid, files)
        self.lts = work / f"lts-{files}"
        self.lts.mkdir()
        self.download_dir = work / f"baseline-{files}"
        self.download_dir.mkdir()
        self.blocks = plan_datablocks(self.pid, list_dataset_files(s3, buckets["landing"], self.pid), target_mb * MiB)
        self.figures: dict[str, tuple[float, int, int]] = {}

    def run_engine(self) -> None:
        s3, landing = self.s3, self.buckets["landing"]

        def archive_and_verify():
            for block in self.blocks:
                archive_datablock(s3, landing, block, self.lts)
                verify_datablock(self.lts, block.archive_id)

        self.figures["archive+verify"] = timed(archive_and_verify)
        self.figures["retrieve"] = timed(lambda: [
            retrieve_datablock(self.lts, b.archive_id, s3, self.buckets["retrieval"], file_timeout_s=60)
            for b in self.blocks
        ])

    def run_baselines(self) -> None:
        s3 = self.s3

        def download():
            for i, f in enumerate(list_dataset_files(s3, self.buckets["landing"], self.pid)):
                target = self.download_dir / f"{i:04d}"
                s3.download_file(self.buckets["landing"], f.key, str(target))
                fd = os.open(target, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(self.download_dir)

        def upload():
            for b in self.blocks:
                s3.upload_file(str(naming.datablock_path(self.lts, b.archive_id)), self.buckets["plain"], b.archive_id)

        self.figures["baseline download+fsync"] = timed(download)
        self.figures["baseline upload"] = timed(upload)

    def report(self, target_mb: int) -> None:
        packed = sum(b.packed_size for b in self.blocks)
        print(f"dataset of {self.files} x 64 MiB = {self.total / MiB:.0f} MiB in {len(self.blocks)} datablock(s) "
              f"of <= {target_mb} MiB ({packed / MiB:.1f} MiB of tar):")
        for name, (seconds, peak, start_rss) in self.figures.items():
            print(f"  {name:<26} {self.total / MiB / seconds:8.1f} MB/s   {seconds:6.1f} s   "
                  f"peak RSS {peak / MiB:6.1f} MiB (at start {start_rss / MiB:6.1f})")
        f = self.figures
        print(f"  archive / baseline download: {f['baseline download+fsync'][0] / f['archive+verify'][0]:.2f}x"
              f"   retrieve / baseline upload: {f['baseline upload'][0] / f['retrieve'][0]:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-files", type=int, default=8, help="64 MiB files in the small dataset")
    parser.add_argument("--large-files", type=int, default=32, help="64 MiB files in the large dataset")
    parser.add_argument("--target-mb", type=int, default=1024, help="ARCHIVER_TARGET_SIZE_MB for the run")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the LTS and baseline copies")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.work_dir, prefix="bench-datapath-")))
        server = stack.enter_context(local_services.s3_server(work / "logs"))
        s3 = s3_client(server.url, REGION, S3Credentials("bench-access", "bench-secret"))
        buckets = {role: f"bench-{role}" for role in ("landing", "retrieval", "plain")}
        for bucket in buckets.values():
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        print(f"data path benchmark (moto S3 at {server.url}, LTS and baseline copies in {work}); "
              "MB/s = MiB of dataset files per second; RSS is this process's, not moto's")
        small = Dataset(s3, buckets, work, args.small_files, args.target_mb)
        large = Dataset(s3, buckets, work, args.large_files, args.target_mb)
        # Engine first, both sizes back to back, so the growth between them is the engine's own.
        small.run_engine()
        large.run_engine()
        small.run_baselines()
        large.run_baselines()
        small.report(args.target_mb)
        large.report(args.target_mb)
        for phase in ("archive+verify", "retrieve"):
            growth = (large.figures[phase][1] - small.figures[phase][1]) / MiB
            print(f"peak RSS growth {phase}, {small.total // MiB} MiB -> {large.total // MiB} MiB: {growth:+.1f} MiB")

if __name__ == "__main__":
    main()
