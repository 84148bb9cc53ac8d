"""The plain boto3 baselines the data path benchmark sets the engine beside, and the targets it judges them by.

- sequential raw download: every object one after the other (today's first baseline),
- parallel raw download: every object with as many GETs in flight as the archival engine has for files of
  that size (`engine_gets_in_flight`), so archive+verify is compared with a download that had the same
  parallelism to work with,
- plain upload: boto3 upload_file of each datablock, one after the other.

Each download writes the files to one folder and makes them durable together at the end (fsync of every
file and of the folder), as the engine makes a datablock durable once, not piece by piece.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from archiver.packing.checking import CHUNK
from archiver.packing.sources import Prefetch
from archiver.storage.lts import fsync_dir

KiB = 1024
MiB = 1024 * KiB

# Issue 16/27, by file size: archive+verify against the parallel raw download of the same files ...
ARCHIVE_TARGETS = {64 * MiB: 1.0, 1 * MiB: 1.0, 64 * KiB: 0.8}
# ... and retrieval against the plain upload of the same datablocks.
RETRIEVE_TARGETS = {64 * MiB: 1.0, 1 * MiB: 1.0}


def engine_gets_in_flight(
    file_size: int, datablocks: int, datablock_concurrency: int, prefetch: Prefetch = Prefetch()
) -> int:
    """GETs the archival engine has in flight for a dataset of files of `file_size`: each datablock being written
    fetches objects up to `prefetch.small_object_bytes` on `prefetch.threads` threads ahead of its writer and
    streams a larger one alone in its turn (packing.sources), and `datablock_concurrency` datablocks are
    written at once (ARCHIVER_DATABLOCK_CONCURRENCY), never more than there are."""
    per_datablock = prefetch.threads if file_size <= prefetch.small_object_bytes else 1
    return max(1, min(datablocks, datablock_concurrency)) * per_datablock


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return "no target"
    return "met" if ratio >= target else "not met"


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sequential_download(s3, bucket: str, keys: list[tuple[str, int]], folder: Path) -> None:
    """Every object one after the other: boto3 download_file from its multipart threshold up (concurrent
    ranged GETs), a plain get_object below (download_file's per-call HEAD and thread pool would make small
    files a slow baseline); then every file and the folder fsynced."""
    targets = []
    for i, (key, size) in enumerate(keys):
        target = folder / f"{i:05d}"
        if size >= TransferConfig().multipart_threshold:
            s3.download_file(bucket, key, str(target))
        else:
            target.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        targets.append(target)
    for target in targets:
        fsync_file(target)
    fsync_dir(folder)


def parallel_download(s3, bucket: str, keys: list[tuple[str, int]], folder: Path, in_flight: int) -> None:
    """Every object with one GET each, `in_flight` at once, streamed to its file in the engine's read chunks;
    then every file (on the same threads) and the folder fsynced."""
    targets = [folder / f"{i:05d}" for i in range(len(keys))]

    def get(i: int) -> None:
        body = s3.get_object(Bucket=bucket, Key=keys[i][0])["Body"]
        with open(targets[i], "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                out.write(chunk)

    with ThreadPoolExecutor(in_flight, thread_name_prefix="raw-get") as pool:
        list(pool.map(get, range(len(keys))))
        list(pool.map(fsync_file, targets))
    fsync_dir(folder)


def plain_upload(s3, bucket: str, files: list[tuple[Path, str]]) -> None:
    """boto3 upload_file of each (path, key), one after the other (its own multipart threads within a file)."""
    for path, key in files:
        s3.upload_file(str(path), bucket, key)
