"""Data path benchmark: prints figures, asserts nothing.

Starts a moto S3 server (subprocess), fills a landing-zone bucket with a dataset
of N x 64 MiB random files, then in this process:
  - archives it into datablocks on a local LTS folder and verifies them,
  - retrieves the datablocks into a retrieval bucket,
  - runs the plain baselines on the same bytes: boto3 download_file of every
    object to the same filesystem + fsync, and boto3 upload_file of the datablocks.
It does this for a small and a large dataset (default 512 MiB and 2 GiB) and
prints MB/s and the peak RSS of this process (moto keeps objects in its own
process, which is not counted) per phase, plus the RSS growth between sizes.

    .venv/bin/python backend/benchmarks/bench_datapath.py [--small-files 8] [--large-files 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
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
from archiver.storage.s3 import S3Credentials, delete_prefix, s3_client

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


def timed(fn):
    with PeakRss() as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, rss.peak


def fill_landing_zone(s3, bucket: str, pid: str, files: int) -> int:
    prefix = naming.landing_prefix(pid)
    for i in range(files):
        s3.put_object(Bucket=bucket, Key=f"{prefix}run/frame_{i:04d}.raw", Body=os.urandom(FILE_SIZE))
    return files * FILE_SIZE


def run_size(s3, buckets: dict[str, str], work: Path, files: int, target_mb: int) -> dict[str, tuple[float, int]]:
    pid = f"20.500.11935/bench-{files}"
    total = fill_landing_zone(s3, buckets["landing"], pid, files)
    lts = work / f"lts-{files}"
    lts.mkdir()
    blocks = plan_datablocks(pid, list_dataset_files(s3, buckets["landing"], pid), target_mb * MiB)
    figures: dict[str, tuple[float, int]] = {}

    def archive_and_verify():
        for block in blocks:
            archive_datablock(s3, buckets["landing"], block, lts)
            verify_datablock(lts, block.archive_id)

    figures["archive+verify"] = timed(archive_and_verify)
    figures["retrieve"] = timed(lambda: [
        retrieve_datablock(lts, b.archive_id, s3, buckets["retrieval"], file_timeout_s=60) for b in blocks
    ])

    download_dir = work / f"baseline-{files}"
    download_dir.mkdir()

    def baseline_download():
        for i, f in enumerate(list_dataset_files(s3, buckets["landing"], pid)):
            target = download_dir / f"{i:04d}"
            s3.download_file(buckets["landing"], f.key, str(target))
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(download_dir)

    figures["baseline download+fsync"] = timed(baseline_download)

    def baseline_upload():
        for b in blocks:
            s3.upload_file(str(naming.datablock_path(lts, b.archive_id)), buckets["plain"], f"{b.archive_id}.plain")

    packed = sum(b.packed_size for b in blocks)
    figures["baseline upload"] = timed(baseline_upload)
    print(f"  {files} x 64 MiB = {total / MiB:.0f} MiB in {len(blocks)} datablock(s) of <= {target_mb} MiB "
          f"({packed / MiB:.1f} MiB of tar)")
    for name, (seconds, peak) in figures.items():
        print(f"  {name:<26} {total / MiB / seconds:8.1f} MB/s   {seconds:6.1f} s   peak RSS {peak / MiB:6.1f} MiB")
    print(f"  archive / baseline download: {figures['baseline download+fsync'][0] / figures['archive+verify'][0]:.2f}x"
          f"   retrieve / baseline upload: {figures['baseline upload'][0] / figures['retrieve'][0]:.2f}x")
    for bucket in buckets.values():
        delete_prefix(s3, bucket, "")
    shutil.rmtree(lts)
    shutil.rmtree(download_dir)
    return figures


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
        results = {}
        for files in (args.small_files, args.large_files):
            print(f"dataset of {files} files:")
            results[files] = run_size(s3, buckets, work, files, args.target_mb)
        small, large = results[args.small_files], results[args.large_files]
        for phase in ("archive+verify", "retrieve"):
            growth = (large[phase][1] - small[phase][1]) / MiB
            print(f"peak RSS growth {phase}, {args.small_files * 64} MiB -> {args.large_files * 64} MiB: {growth:+.1f} MiB")


if __name__ == "__main__":
    main()
