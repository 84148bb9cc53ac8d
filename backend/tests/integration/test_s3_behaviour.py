"""S3 behaviour the archiver relies on, checked on the test tier's S3 server (SeaweedFS), which moto did not have."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from archiver.storage import multipart
from archiver.storage.s3 import MIN_PART_SIZE, error_code

pytestmark = pytest.mark.integration


def test_abort_with_another_key_answers_no_such_upload_and_the_upload_lives_on(s3, bucket):
    """The upload API aborts the upload id a caller names under the key of the caller's file: that another
    file's (or dataset's) upload survives depends on S3 checking the key, as S3 and MinIO do (moto did not)."""
    upload_id = multipart.start_upload(s3, bucket, "dataset-a/file.bin")
    etag = s3.upload_part(
        Bucket=bucket, Key="dataset-a/file.bin", UploadId=upload_id, PartNumber=1, Body=b"a" * MIN_PART_SIZE
    )["ETag"]

    with pytest.raises(ClientError) as answer:
        s3.abort_multipart_upload(Bucket=bucket, Key="dataset-b/file.bin", UploadId=upload_id)
    assert error_code(answer.value) == "NoSuchUpload"
    assert multipart.abort_upload(s3, bucket, "dataset-b/file.bin", upload_id) is False

    assert [(u.key, u.upload_id) for u in multipart.unfinished_uploads(s3, bucket, "")] == [
        ("dataset-a/file.bin", upload_id)
    ]
    assert list(multipart.uploaded_parts(s3, bucket, "dataset-a/file.bin", upload_id)) == [1]
    multipart.complete_upload(s3, bucket, "dataset-a/file.bin", upload_id, [multipart.UploadedPart(1, etag, 0)])
    assert s3.head_object(Bucket=bucket, Key="dataset-a/file.bin")["ContentLength"] == MIN_PART_SIZE
