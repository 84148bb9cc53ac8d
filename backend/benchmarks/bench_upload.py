"""Upload benchmark: a file sent through presigned part URLs (what `archiver upload` does, no S3 credentials)
beside a plain boto3 upload_file of the same file with the same part size and parallelism. Prints MB/s and
the ratio; asserts nothing.

Starts a SeaweedFS S3 server (subprocess; `--s3 moto` for moto's). The presigned path is the client's own
code (`upload_command`: part read, Content-MD5, PUT with httpx, ETag check) against URLs signed as the
archiver API signs them; the API's own round trips (a handful per file) are left out, they do not grow with
the file.

    .venv/bin/python backend/benchmarks/bench_upload.py [--size-mb 256] [--part-mb 16] [--parallel 4] [--s3 moto]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_s3  # beside this file
import httpx
from boto3.s3.transfer import TransferConfig

from archiver.storage import multipart
from archiver.storage.s3 import S3Credentials, s3_client
from archiver.upload_command import UploadReport, _PartUploader

REGION = "eu-west-1"
CREDENTIALS = S3Credentials("bench-access-key", "bench-secret-key")


def presigned_upload(s3, bucket: str, key: str, path: Path, part_size: int, parallel: int) -> None:
    size = path.stat().st_size
    upload_id = multipart.start_upload(s3, bucket, key)
    plan = {"size": size, "partSize": part_size}
    count = multipart.part_count(size, part_size)
    urls = [
        multipart.presigned_part_url(s3, bucket, key, upload_id, n, 3600, multipart.part_length(size, part_size, n))
        for n in range(1, count + 1)
    ]
    report = UploadReport()
    with httpx.Client(timeout=300) as http, ThreadPoolExecutor(parallel) as pool:
        uploader = _PartUploader(http, lambda *a: None)
        parts = list(pool.map(lambda n: uploader.put(key, path, plan, n, urls[n - 1], report), range(1, count + 1)))
    multipart.complete_upload(
        s3, bucket, key, upload_id, [multipart.UploadedPart(p["partNumber"], p["etag"], 0) for p in parts]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256, help="file size in MiB (default: 256)")
    parser.add_argument("--part-mb", type=int, default=16, help="part size in MiB (default: 16)")
    parser.add_argument("--parallel", type=int, default=4, help="parts sent at once, both ways (default: 4)")
    bench_s3.add_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, bench_s3.server(args.s3, Path(tmp), CREDENTIALS) as server:
        s3 = s3_client(server.url, REGION, CREDENTIALS)
        s3.create_bucket(Bucket="bench", CreateBucketConfiguration={"LocationConstraint": REGION})
        path = Path(tmp) / "file.bin"
        with path.open("wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(2**20))
        part_size = args.part_mb * 2**20
        config = TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=args.parallel
        )
        figures = {}
        for name, upload in (
            ("boto3 upload_file", lambda key: s3.upload_file(str(path), "bench", key, Config=config)),
            ("presigned part URLs", lambda key: presigned_upload(s3, "bench", key, path, part_size, args.parallel)),
        ):
            start = time.perf_counter()
            upload(name.replace(" ", "-"))
            seconds = time.perf_counter() - start
            assert s3.head_object(Bucket="bench", Key=name.replace(" ", "-"))["ContentLength"] == path.stat().st_size
            figures[name] = args.size_mb / seconds
            s3.delete_object(Bucket="bench", Key=name.replace(" ", "-"))
        print(f"upload of {args.size_mb} MiB, {args.part_mb} MiB parts, {args.parallel} at once, {args.s3} S3 server:")
        for name, rate in figures.items():
            print(f"  {name:22s} {rate:8.1f} MB/s")
        print(f"  presigned / boto3      {figures['presigned part URLs'] / figures['boto3 upload_file']:8.2f}")


if __name__ == "__main__":
    main()
