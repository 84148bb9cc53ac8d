"""Multipart uploads that someone else carries out: part sizes, presigned part URLs, what S3 holds so far.

The archiver creates, lists, completes and aborts the upload with its own account; the uploader only PUTs
parts to presigned URLs, so it never holds S3 credentials."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote

from botocore.exceptions import ClientError

from archiver.errors import ArchiverError
from archiver.storage.s3 import MIN_PART_SIZE, delete_keys, error_code, iter_objects

MAX_PARTS = 10_000  # S3's limit per upload
MAX_PART_SIZE = 5 * 2**30
MAX_OBJECT_SIZE = 5 * 2**40
MIB = 2**20
# What an upload under way will still bring: an empty object `<prefix><upload id>/<file size>` per upload,
# beside the datasets (S3 lists no size for an unfinished upload), so the budget counts it before its parts.
RESERVATIONS_PREFIX = "openem-network/upload-reservations/"


class TooLargeError(ArchiverError, ValueError):
    """A file larger than S3 stores in one object."""


def part_size_for(size: int, preferred: int) -> int:
    """The part size of a file: `preferred` unless the file would need more than MAX_PARTS parts, then the
    smallest whole number of MiB that fits it in MAX_PARTS parts."""
    if size > MAX_OBJECT_SIZE:
        raise TooLargeError(f"{size} bytes is more than S3 stores in one object ({MAX_OBJECT_SIZE} bytes, 5 TiB)")
    fitting = math.ceil(math.ceil(size / MAX_PARTS) / MIB) * MIB
    return min(MAX_PART_SIZE, max(preferred, MIN_PART_SIZE, fitting))


def part_count(size: int, part_size: int) -> int:
    """Parts of a file (an empty file is one empty part)."""
    return max(1, math.ceil(size / part_size))


def part_length(size: int, part_size: int, number: int) -> int:
    """Bytes of part `number` (1-based): all parts are `part_size` but the last."""
    return max(0, min(part_size, size - (number - 1) * part_size))


@dataclass(frozen=True)
class UploadedPart:
    number: int
    etag: str
    size: int


@dataclass(frozen=True)
class UnfinishedUpload:
    key: str
    upload_id: str
    initiated: datetime


def unfinished_uploads(s3, bucket: str, prefix: str) -> Iterator[UnfinishedUpload]:
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            yield UnfinishedUpload(upload["Key"], upload["UploadId"], upload["Initiated"])


def newest_unfinished_upload(s3, bucket: str, key: str) -> str | None:
    """The upload id of the latest unfinished upload of exactly `key`, if any."""
    found = [u for u in unfinished_uploads(s3, bucket, key) if u.key == key]
    return max(found, key=lambda u: u.initiated).upload_id if found else None


def is_upload_of(s3, bucket: str, key: str, upload_id: str) -> bool:
    """Whether `upload_id` is an unfinished upload of exactly `key`. Asked before completing or aborting: S3 and
    MinIO refuse a wrong key (NoSuchUpload), some servers (moto) go by the upload id alone."""
    return any(u.key == key and u.upload_id == upload_id for u in unfinished_uploads(s3, bucket, key))


def start_upload(s3, bucket: str, key: str) -> str:
    return s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]


def uploaded_parts(s3, bucket: str, key: str, upload_id: str) -> dict[int, UploadedPart]:
    """The parts S3 holds for an unfinished upload; KeyError when the upload does not exist (any more)."""
    parts: dict[int, UploadedPart] = {}
    try:
        for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = UploadedPart(part["PartNumber"], part["ETag"], part["Size"])
    except ClientError as e:
        if error_code(e) in ("NoSuchUpload", "404"):
            raise KeyError(upload_id) from None
        raise
    return parts


def presigned_part_url(
    signer,
    bucket: str,
    key: str,
    upload_id: str,
    number: int,
    expires_s: int,
    length: int,
    md5_base64: str | None = None,
) -> str:
    """A PUT URL for one part of exactly `length` bytes (and, given its MD5, exactly those bytes); `signer` is a
    client for the endpoint the uploader reaches. Content-Length (and Content-MD5) become signed headers: S3
    refuses a PUT of another size (SignatureDoesNotMatch, 403), so a URL never stores more than its part."""
    params = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number, "ContentLength": length}
    if md5_base64 is not None:
        params["ContentMD5"] = md5_base64
    return signer.generate_presigned_url("upload_part", Params=params, ExpiresIn=int(expires_s))


def complete_upload(s3, bucket: str, key: str, upload_id: str, parts: list[UploadedPart]) -> None:
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in sorted(parts, key=lambda p: p.number)]
        },
    )


def abort_upload(s3, bucket: str, key: str, upload_id: str) -> bool:
    """False when there was no such upload."""
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as e:
        if error_code(e) in ("NoSuchUpload", "404"):
            return False
        raise
    return True


def object_sizes(s3, bucket: str, prefix: str) -> dict[str, int]:
    return {obj["Key"]: obj["Size"] for obj in iter_objects(s3, bucket, prefix)}


def _reservation_prefix(upload_id: str) -> str:
    return RESERVATIONS_PREFIX + quote(upload_id, safe="") + "/"


def reserve(s3, bucket: str, upload_id: str, size: int) -> None:
    s3.put_object(Bucket=bucket, Key=f"{_reservation_prefix(upload_id)}{size}", Body=b"")


def release(s3, bucket: str, upload_ids: Iterable[str]) -> int:
    """Remove the reservations of uploads that finished or were aborted; returns how many were removed."""
    keys = [obj["Key"] for upload_id in upload_ids for obj in iter_objects(s3, bucket, _reservation_prefix(upload_id))]
    return delete_keys(s3, bucket, keys)


def reservations(s3, bucket: str) -> dict[str, int]:
    """File size per upload id, for the uploads that have a reservation."""
    found = {}
    for obj in iter_objects(s3, bucket, RESERVATIONS_PREFIX):
        upload_id, _, size = obj["Key"].removeprefix(RESERVATIONS_PREFIX).rpartition("/")
        if size.isdecimal():
            found[unquote(upload_id)] = int(size)
    return found


def bucket_usage(s3, bucket: str) -> int:
    """Bytes the bucket holds or is promised: its objects, and per unfinished upload its file's size
    (reserved) or, if more or unreserved, the parts it holds."""
    used = sum(obj["Size"] for obj in iter_objects(s3, bucket, ""))
    reserved = reservations(s3, bucket)
    for upload in unfinished_uploads(s3, bucket, ""):
        try:
            parts = sum(p.size for p in uploaded_parts(s3, bucket, upload.key, upload.upload_id).values())
        except KeyError:  # finished or aborted meanwhile
            continue
        used += max(parts, reserved.get(upload.upload_id, 0))
    return used


def release_if_gone(s3, bucket: str, upload_ids: Iterable[str]) -> int:
    """Remove the reservations of those uploads that S3 no longer lists as under way (completed or aborted),
    whatever the call that was meant to end them answered; returns how many were removed. An upload still
    listed keeps its reservation: the budget goes on counting it."""
    wanted = set(upload_ids)
    if not wanted:
        return 0
    live = {upload.upload_id for upload in unfinished_uploads(s3, bucket, "")}
    return release(s3, bucket, sorted(wanted - live))


def release_orphaned(s3, bucket: str) -> int:
    """Remove the reservations whose upload is gone (aborted by the bucket's lifecycle rule, or whose
    release failed); returns how many."""
    return release_if_gone(
        s3, bucket, reservations(s3, bucket)
    )  # listed first: an upload is created before its reservation


def abort_uploads(s3, bucket: str, prefix: str, started_before: datetime | None = None) -> list[UnfinishedUpload]:
    """Abort the unfinished uploads below `prefix` (only those started before `started_before`, if given) and
    release the budget reservations of those S3 ended; returns the uploads aborted."""
    aborted = [
        upload
        for upload in unfinished_uploads(s3, bucket, prefix)
        if (started_before is None or upload.initiated < started_before)
        and abort_upload(s3, bucket, upload.key, upload.upload_id)
    ]
    release_if_gone(s3, bucket, [upload.upload_id for upload in aborted])
    return aborted
