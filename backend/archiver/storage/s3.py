"""S3 through boto3, configured to work against MinIO and moto alike: clients, streaming reads,
multipart writes, prefix cleanup, presigned URLs."""

from __future__ import annotations

import base64
import hashlib
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from archiver.config.secrets import S3Account, read_secret
from archiver.config.settings import MAX_PRESIGNED_URL_SECONDS


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return "S3Credentials(access_key=***, secret_key=***)"

    @classmethod
    def from_secret_files(cls, account: S3Account, secrets_dir: Path, environ=None) -> S3Credentials:
        """The account's keys from its secret files (`<NAME>_FILE` in `environ`, else in `secrets_dir`)."""
        return cls(read_secret(account.user, secrets_dir, environ), read_secret(account.password, secrets_dir, environ))


def s3_client(endpoint: str, region: str, credentials: S3Credentials | None, max_pool_connections: int = 16):
    """A client of the S3 service at `endpoint`; `credentials` None: boto3's own chain (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, ~/.aws, an instance's or container's role)."""
    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        # boto3 >= 1.36 sends integrity checksums that older S3-compatible servers reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key if credentials else None,
        aws_secret_access_key=credentials.secret_key if credentials else None,
        config=config,
    )


# --- listing, streaming reads, multipart writes, cleanup, presigned URLs ---

MIN_PART_SIZE = 5 * 1024 * 1024


def iter_objects(s3, bucket: str, prefix: str) -> Iterator[dict]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class ObjectReader:
    """Reads one object as a stream; a connection lost mid-way resumes with a ranged GET of the same version."""

    def __init__(self, s3, bucket: str, key: str, max_resumes: int = 3):
        self._s3, self._bucket, self._key = s3, bucket, key
        self._resumes_left = max_resumes
        response = s3.get_object(Bucket=bucket, Key=key)
        self._etag = response["ETag"]
        self._body = response["Body"]
        self.position = 0

    def read(self, size: int) -> bytes:
        while True:
            try:
                data = self._body.read(size)
                self.position += len(data)
                return data
            except (BotoCoreError, OSError):
                if self._resumes_left <= 0:
                    raise
                self._resumes_left -= 1
                self._body.close()
                response = self._s3.get_object(
                    Bucket=self._bucket, Key=self._key, Range=f"bytes={self.position}-", IfMatch=self._etag
                )
                self._body = response["Body"]

    def close(self) -> None:
        self._body.close()


class MultipartUpload:
    """Upload bytes as they come, in parts; memory is `max_in_flight + 1` part buffers, reused.

    Nothing is visible in the bucket until `complete()`; `abort()` (or leaving the
    `with` block by an exception) removes every uploaded part. `storage_class`: the object's (S3's default when
    None); `sha256_parts`: each part sent with its SHA-256, which S3 checks (ChecksumAlgorithm SHA256)."""

    def __init__(
        self,
        s3,
        bucket: str,
        key: str,
        part_size: int = 8 * 1024 * 1024,
        max_in_flight: int = 2,
        metadata: dict[str, str] | None = None,
        storage_class: str | None = None,
        sha256_parts: bool = False,
    ):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum), got {part_size}")
        self._s3, self.bucket, self.key = s3, bucket, key
        self._part_size = part_size
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(max_in_flight):
            self._free.put(bytearray(part_size))
        self._current, self._filled = bytearray(part_size), 0
        self._parts: list[Future] = []
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="s3-part")
        self.size = 0
        self._sha256_parts = sha256_parts
        self.part_sha256: list[str] = []  # with `sha256_parts`, each part's as sent, once every part is stored
        extra: dict = {"Metadata": metadata} if metadata else {}
        if storage_class:
            extra["StorageClass"] = storage_class
        if sha256_parts:
            extra["ChecksumAlgorithm"] = "SHA256"
        self.upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]

    def write(self, data) -> None:
        view = memoryview(data)
        self.size += len(view)
        while len(view):
            n = min(len(view), self._part_size - self._filled)
            self._current[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == self._part_size:
                self._submit(self._current, reuse=True)
                self._current, self._filled = self._free.get(), 0  # waits while all buffers are uploading

    def _submit(self, data: bytearray | bytes, reuse: bool) -> None:
        for done in (f for f in self._parts if f.done()):
            done.result()  # a failed part stops the upload now, not after the whole file was read
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(self._upload_part, number, data, reuse))

    def _upload_part(self, number: int, data: bytearray | bytes, reuse: bool) -> dict:
        try:
            checksum = {"ChecksumSHA256": sha256_base64(data)} if self._sha256_parts else {}
            response = self._s3.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data, **checksum
            )
            return {"PartNumber": number, "ETag": response["ETag"], **checksum}
        finally:
            if reuse and isinstance(data, bytearray):
                self._free.put(data)

    def complete(self, before: Callable[[], None] | None = None, if_none_match: bool = False) -> int:
        """Upload what is left, call `before` once every part is stored, then make the object. `if_none_match`:
        only if the key has no object (S3's conditional write; PreconditionFailed otherwise)."""
        if self._filled or not self._parts:
            self._submit(bytes(self._current[: self._filled]), reuse=False)
            self._filled = 0
        parts = [f.result() for f in self._parts]
        self._pool.shutdown()
        self.part_sha256 = [part["ChecksumSHA256"] for part in parts if "ChecksumSHA256" in part]
        if before is not None:
            before()
        condition = {"IfNoneMatch": "*"} if if_none_match else {}
        self._s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}, **condition
        )
        return self.size

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)

    def __enter__(self) -> MultipartUpload:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            return
        try:
            self.abort()
        except Exception as abort_error:  # keep the original error; say what is left behind
            exc.add_note(
                f"aborting multipart upload {self.upload_id} of s3://{self.bucket}/{self.key} failed too: {abort_error}"
            )


def sha256_base64(data) -> str:
    """The SHA-256 of `data` as S3's checksum headers carry it (base64)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def composite_sha256(part_sha256: list[str]) -> str:
    """The checksum S3 keeps for an object uploaded in parts, each with its SHA-256 (`x-amz-checksum-sha256`,
    ChecksumType COMPOSITE): the SHA-256 of the parts' digests one after the other, `<base64>-<parts>`."""
    digests = b"".join(base64.b64decode(checksum) for checksum in part_sha256)
    return f"{sha256_base64(digests)}-{len(part_sha256)}"


def delete_prefix(s3, bucket: str, prefix: str) -> int:
    """Delete every object below `prefix` and abort its unfinished multipart uploads; returns objects deleted."""
    deleted = 0
    batch: list[str] = []
    for obj in iter_objects(s3, bucket, prefix):
        batch.append(obj["Key"])
        if len(batch) == 1000:
            deleted += delete_keys(s3, bucket, batch)
            batch = []
    deleted += delete_keys(s3, bucket, batch)
    abort_multipart_uploads(s3, bucket, prefix)
    return deleted


def delete_keys(s3, bucket: str, keys: list[str]) -> int:
    """Delete the named objects (absent ones are no error); returns how many were asked for."""
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors", [])
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"could not delete {len(errors)} object(s) of s3://{bucket}, e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message')}"
            )
    return len(keys)


def abort_multipart_uploads(s3, bucket: str, prefix: str) -> int:
    """Abort the unfinished multipart uploads below `prefix`; finished objects stay. Returns how many."""
    aborted = 0
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted


def presigned_get_url(
    external_endpoint: str,
    region: str,
    credentials: S3Credentials,
    bucket: str,
    key: str,
    expires_s: int,
) -> str:
    """A GET URL signed for the endpoint users reach (not the one the archiver uses); at most 7 days."""
    if not 0 < expires_s <= MAX_PRESIGNED_URL_SECONDS:
        raise ValueError(
            f"presigned URL lifetime {expires_s}s is outside 1..{MAX_PRESIGNED_URL_SECONDS}s (7 days, the S3 limit)"
        )
    client = s3_client(external_endpoint, region, credentials)
    return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s))


def presigned_url_expiry(url: str) -> datetime | None:
    """When a SigV4 presigned URL stops working (`X-Amz-Date` + `X-Amz-Expires`); None if it says neither."""
    query = parse_qs(urlsplit(url).query)
    try:
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return signed + timedelta(seconds=int(query["X-Amz-Expires"][0]))
    except (KeyError, IndexError, ValueError):
        return None
