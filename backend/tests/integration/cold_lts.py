"""The flows' LTS on the cold tier stand-in, for flow tests that run on both stores."""

from __future__ import annotations

from archiver.config.secrets import ARCHIVER_S3, LTS_S3
from tests.conftest import S3_TEST_ACCOUNTS, S3_TEST_REGION, write_s3_account


def use_cold_lts(pipeline, s3, proxy, bucket: str) -> None:
    """The flows' LTS becomes `bucket` (created here) on the cold tier stand-in `proxy` (DEEP_ARCHIVE, LTS_BACKEND
    "s3"), reached with the flows' S3 account's keys as the LTS account (Secret blocks lts-s3-user/-password)."""
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    # The LTS account's keys as an operator gives them: secret files, seeded as Secret blocks by set_vars.
    write_s3_account(pipeline.secrets_dir, LTS_S3, S3_TEST_ACCOUNTS[ARCHIVER_S3])
    pipeline.set_vars(
        "lts",
        LTS_BACKEND="s3",
        LTS_S3_ENDPOINT=proxy.url,
        LTS_S3_REGION=S3_TEST_REGION,
        LTS_S3_BUCKET=bucket,
        LTS_RESTORE_TIMEOUT_HOURS=0.01,
    )


def pipeline_store(pipeline):
    """The pipeline's LTS store as the flows open it (on the cold tier with the LTS account's keys)."""
    from archiver.storage.lts_store import open_store

    cold = pipeline.settings.lts.backend == "s3"
    return open_store(pipeline.settings.lts, S3_TEST_ACCOUNTS[ARCHIVER_S3] if cold else None)
