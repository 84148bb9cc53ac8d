"""The cold-tier stand-in (devtools/cold_s3.py) in front of the tests' SeaweedFS, driven with boto3 as the
archiver drives S3: archived objects are refused until restored, restores run, finish, fail and expire as on
AWS S3, and everything else passes through with its signature intact."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from archiver.storage.s3 import MIN_PART_SIZE, MultipartUpload, composite_sha256, s3_client, sha256_base64
from tests.conftest import S3_TEST_ACCOUNTS, S3_TEST_CREDENTIALS, S3_TEST_REGION

RESTORE = {"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}}


@pytest.fixture
def cold(cold_s3_proxy):
    return cold_s3_proxy


@pytest.fixture
def cold_s3(cold):
    return s3_client(cold.url, S3_TEST_REGION, S3_TEST_CREDENTIALS)


def _error(call) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def _code(call) -> str:
    return _error(call).response["Error"]["Code"]


def _status(answer: dict) -> int:
    return answer["ResponseMetadata"]["HTTPStatusCode"]


def test_a_cold_object_is_refused_until_restored_then_readable_then_expired(cold, cold_s3, bucket):
    cold.tier.restored_for_s = 1.5
    cold_s3.put_object(Bucket=bucket, Key="a/block.tar", Body=b"archived bytes", StorageClass="DEEP_ARCHIVE")

    with pytest.raises(cold_s3.exceptions.InvalidObjectState) as refused:
        cold_s3.get_object(Bucket=bucket, Key="a/block.tar")
    assert refused.value.response["Error"]["Code"] == "InvalidObjectState"
    assert _status(refused.value.response) == 403
    assert refused.value.response["StorageClass"] == "DEEP_ARCHIVE"
    head = cold_s3.head_object(Bucket=bucket, Key="a/block.tar")
    assert head["StorageClass"] == "DEEP_ARCHIVE" and "Restore" not in head

    started = cold_s3.restore_object(Bucket=bucket, Key="a/block.tar", RestoreRequest=RESTORE)
    assert _status(started) == 202
    assert cold_s3.head_object(Bucket=bucket, Key="a/block.tar")["Restore"] == 'ongoing-request="true"'
    again = _error(lambda: cold_s3.restore_object(Bucket=bucket, Key="a/block.tar", RestoreRequest=RESTORE))
    assert again.response["Error"]["Code"] == "RestoreAlreadyInProgress"
    assert _status(again.response) == 409
    assert _code(lambda: cold_s3.get_object(Bucket=bucket, Key="a/block.tar")) == "InvalidObjectState"

    time.sleep(0.7)
    restored = cold_s3.head_object(Bucket=bucket, Key="a/block.tar")["Restore"]
    assert restored.startswith('ongoing-request="false", expiry-date="') and restored.endswith(' GMT"')
    got = cold_s3.get_object(Bucket=bucket, Key="a/block.tar", Range="bytes=9-")
    assert got["Body"].read() == b"bytes" and got["Restore"] == restored
    assert _status(cold_s3.restore_object(Bucket=bucket, Key="a/block.tar", RestoreRequest=RESTORE)) == 200

    time.sleep(1.6)
    assert "Restore" not in cold_s3.head_object(Bucket=bucket, Key="a/block.tar")
    assert _code(lambda: cold_s3.get_object(Bucket=bucket, Key="a/block.tar")) == "InvalidObjectState"
    assert [tier for _, key, tier in cold.tier.restore_requests if key == "a/block.tar"] == ["Bulk"] * 3


def test_a_failed_restore_never_finishes(cold, cold_s3, bucket):
    cold.tier.restores_fail = True
    cold_s3.put_object(Bucket=bucket, Key="frozen", Body=b"x", StorageClass="GLACIER")
    cold_s3.restore_object(Bucket=bucket, Key="frozen", RestoreRequest=RESTORE)
    time.sleep(0.7)
    assert cold_s3.head_object(Bucket=bucket, Key="frozen")["Restore"] == 'ongoing-request="true"'
    assert _code(lambda: cold_s3.get_object(Bucket=bucket, Key="frozen")) == "InvalidObjectState"


def test_a_multipart_upload_with_a_cold_storage_class_is_cold(cold_s3, bucket):
    upload = cold_s3.create_multipart_upload(Bucket=bucket, Key="mp", StorageClass="GLACIER")["UploadId"]
    part = cold_s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=b"p" * 100)
    cold_s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    )
    assert _code(lambda: cold_s3.get_object(Bucket=bucket, Key="mp")) == "InvalidObjectState"


def test_a_frozen_objects_head_names_its_stored_sha256_while_its_get_is_refused(cold, cold_s3, bucket):
    """What archival's verification of a cold datablock relies on: HeadObject answers for an archived object
    (AWS names its restore state there), with the checksum S3 keeps, and asks no restore."""
    parts = [b"a" * MIN_PART_SIZE, b"b" * 10]
    with MultipartUpload(cold_s3, bucket, "mp", MIN_PART_SIZE, storage_class="DEEP_ARCHIVE", sha256_parts=True) as up:
        for part in parts:
            up.write(part)
        up.complete()

    head = cold_s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")

    assert head["ChecksumSHA256"] == composite_sha256([sha256_base64(part) for part in parts])
    assert head["StorageClass"] == "DEEP_ARCHIVE" and "Restore" not in head
    assert _code(lambda: cold_s3.get_object(Bucket=bucket, Key="mp")) == "InvalidObjectState"
    assert cold.tier.restore_requests == []


def test_other_objects_and_requests_pass_through_with_their_signature(cold, cold_s3, bucket):
    cold_s3.put_object(Bucket=bucket, Key="warm", Body=b"w" * (6 * 1024 * 1024))  # Expect: 100-continue
    assert len(cold_s3.get_object(Bucket=bucket, Key="warm")["Body"].read()) == 6 * 1024 * 1024
    assert [o["Key"] for o in cold_s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["warm"]
    assert _code(lambda: cold_s3.restore_object(Bucket=bucket, Key="warm", RestoreRequest=RESTORE)) == (
        "InvalidObjectState"
    )
    assert _code(lambda: cold_s3.restore_object(Bucket=bucket, Key="nothing", RestoreRequest=RESTORE)) == "NoSuchKey"

    wrong_key = s3_client(cold.url, S3_TEST_REGION, type(S3_TEST_CREDENTIALS)("unknown-key", "unknown-secret"))
    assert _status(_error(lambda: wrong_key.get_object(Bucket=bucket, Key="warm")).response) == 403
    presign = next(c for a, c in S3_TEST_ACCOUNTS.items() if a.name == "presign")
    reader = s3_client(cold.url, S3_TEST_REGION, presign)
    assert reader.get_object(Bucket=bucket, Key="warm")["ContentLength"] == 6 * 1024 * 1024
    assert _status(_error(lambda: reader.put_object(Bucket=bucket, Key="nope", Body=b"")).response) == 403


def test_a_cold_object_is_copied_only_once_restored(cold, cold_s3, bucket):
    cold_s3.put_object(Bucket=bucket, Key="src", Body=b"archived", StorageClass="GLACIER")
    copy = {"Bucket": bucket, "Key": "dst", "CopySource": {"Bucket": bucket, "Key": "src"}}
    assert _code(lambda: cold_s3.copy_object(**copy)) == "InvalidObjectState"
    cold_s3.restore_object(Bucket=bucket, Key="src", RestoreRequest=RESTORE)
    time.sleep(0.7)
    cold_s3.copy_object(**copy, StorageClass="STANDARD")
    assert cold_s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"archived"
