"""The shipped S3 policies (backend/docker/s3-policies/) against an S3 server that enforces them.

A SeaweedFS server of this module's own, with its IAM API open to MinIO's root account stand-in (an Admin
identity), which creates the archiver and presign accounts and attaches the shipped policy documents (bucket
names substituted) as managed policies, as `mc admin policy attach` does on MinIO. (SeaweedFS turns an inline
PutUserPolicy into its own coarse actions and refuses s3:ListBucketMultipartUploads there; attached policies
are evaluated as written.) The flows run for real with those accounts and the download URLs are fetched as
URLs. Where SeaweedFS is laxer than MinIO: ListBuckets lists the buckets an account may reach instead of
being denied, and the archiver account may list an upload's parts in the retrieval bucket, which its policy
does not grant (s3:ListMultipartUploadParts).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError

from archiver import local_services
from archiver.config.errors import ConfigError
from archiver.config.secrets import ARCHIVER_S3, MINIO_ROOT, PRESIGN_S3, S3Account
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.dataset_creation import create_test_dataset_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.storage.s3 import S3Credentials, error_code, presigned_get_url, s3_client
from archiver.tools.seeding import read_inputs, seed
from tests.conftest import S3_TEST_CREDENTIALS, S3_TEST_REGION, write_s3_account

pytestmark = pytest.mark.integration
POLICIES = Path(__file__).resolve().parents[2] / "docker" / "s3-policies"
SHIPPED_BUCKETS = {"landingzone": "landing", "retrieval": "retrieval"}  # bucket in the files -> suffix in tests


class EnforcingS3:
    def __init__(self, url: str, root: S3Credentials):
        import boto3

        self.url, self.root = url, root
        self.iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name=S3_TEST_REGION,
            aws_access_key_id=root.access_key,
            aws_secret_access_key=root.secret_key,
        )

    def account(self, name: str, policy: dict) -> S3Credentials:
        self.iam.create_user(UserName=name)
        arn = self.iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
        self.iam.attach_user_policy(UserName=name, PolicyArn=arn)
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def s3(self, credentials: S3Credentials):
        return s3_client(self.url, S3_TEST_REGION, credentials)


def shipped_policy(account: S3Account, buckets: dict[str, str]) -> dict:
    """The account's policy file with its bucket names replaced as `buckets` says."""
    text = (POLICIES / f"{account.name}.json").read_text()
    for shipped, actual in buckets.items():
        text = text.replace(f'arn:aws:s3:::{shipped}"', f'arn:aws:s3:::{actual}"')
        text = text.replace(f"arn:aws:s3:::{shipped}/", f"arn:aws:s3:::{actual}/")
    return json.loads(text)


@pytest.fixture(scope="module")
def enforcing_s3(tmp_path_factory) -> EnforcingS3:
    folder = tmp_path_factory.mktemp("enforcing-s3")
    root = local_services.S3Identity("root", S3_TEST_CREDENTIALS)
    with local_services.s3_server(folder / "data", folder, [root], iam_api=True) as server:
        yield EnforcingS3(server.url, root.credentials)


@pytest.fixture
def s3_endpoint(enforcing_s3) -> str:
    return enforcing_s3.url


@pytest.fixture
def s3(enforcing_s3):
    return enforcing_s3.s3(enforcing_s3.root)


@pytest.fixture
def accounts(enforcing_s3, unique_name) -> dict[str, S3Credentials]:
    buckets = {shipped: f"{unique_name}-{suffix}" for shipped, suffix in SHIPPED_BUCKETS.items()}
    return {
        account.name: enforcing_s3.account(f"{unique_name}-{account.name}", shipped_policy(account, buckets))
        for account in (ARCHIVER_S3, PRESIGN_S3)
    }


@pytest.fixture
def pipeline_secrets_dir(tmp_path, scicat_secrets_dir, enforcing_s3, accounts) -> Path:
    secrets_dir = tmp_path / "secrets-with-s3-accounts"
    shutil.copytree(scicat_secrets_dir, secrets_dir)
    write_s3_account(secrets_dir, MINIO_ROOT, enforcing_s3.root)
    write_s3_account(secrets_dir, ARCHIVER_S3, accounts["archiver"])
    write_s3_account(secrets_dir, PRESIGN_S3, accounts["presign"])
    return secrets_dir


def denied(call, *args, **kwargs) -> bool:
    try:
        call(*args, **kwargs)
    except ClientError as e:
        return error_code(e) == "AccessDenied"
    return False


def test_flows_archive_and_retrieve_with_their_own_accounts_and_urls_are_signed_by_the_presign_account(
    pipeline,
    enforcing_s3,
    accounts,
):
    pid = create_test_dataset_flow(num_files=3, file_size_mb=0.4)  # the flows' account uploads the test files
    originals = {f.path: f.chk for b in pipeline.scicat.get_origdatablocks(pid) for f in b.data_file_list}

    archive_job = pipeline.new_job("archive", [pid])
    archive_datasets_flow(job_id=archive_job)
    assert pipeline.job(archive_job)["jobStatusMessage"] == "finishedSuccessful"
    assert pipeline.landing_keys(pid) == []

    retrieve_job = pipeline.new_job("retrieve", [pid])
    retrieve_datasets_flow(job_id=retrieve_job)
    job = pipeline.job(retrieve_job)
    assert job["jobStatusMessage"] == "finishedSuccessful", job
    retrieved = {}
    for entry in job["jobResultObject"]["result"]:
        url = urlsplit(entry["url"])
        assert parse_qs(url.query)["X-Amz-Credential"][0].startswith(accounts["presign"].access_key + "/")
        content = httpx.get(entry["url"], timeout=60).raise_for_status().content
        assert len(content) == entry["size"]
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            for member in tar.getmembers():
                retrieved[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    assert retrieved == originals


def test_presign_account_reads_the_retrieval_bucket_and_nothing_else(pipeline, enforcing_s3, accounts, s3):
    landing, retrieval = pipeline.settings.s3.landingzone_bucket, pipeline.settings.s3.retrieval_bucket
    s3.put_object(Bucket=landing, Key="openem-network/datasets/p/raw_files/a", Body=b"landed")
    s3.put_object(Bucket=retrieval, Key="some/datablock.tar", Body=b"retrieved")
    presign = enforcing_s3.s3(accounts["presign"])

    assert presign.get_object(Bucket=retrieval, Key="some/datablock.tar")["Body"].read() == b"retrieved"
    assert denied(presign.get_object, Bucket=landing, Key="openem-network/datasets/p/raw_files/a")
    assert denied(presign.list_objects_v2, Bucket=landing)
    assert denied(presign.put_object, Bucket=landing, Key="openem-network/datasets/p/raw_files/b", Body=b"x")
    assert denied(presign.delete_object, Bucket=landing, Key="openem-network/datasets/p/raw_files/a")
    assert denied(presign.list_objects_v2, Bucket=retrieval)
    assert denied(presign.put_object, Bucket=retrieval, Key="some/other.tar", Body=b"x")
    assert denied(presign.delete_object, Bucket=retrieval, Key="some/datablock.tar")
    assert s3.get_object(Bucket=landing, Key="openem-network/datasets/p/raw_files/a")["Body"].read() == b"landed"


def test_urls_the_presign_account_signs_download_from_the_retrieval_bucket_only(pipeline, enforcing_s3, accounts, s3):
    landing, retrieval = pipeline.settings.s3.landingzone_bucket, pipeline.settings.s3.retrieval_bucket
    s3.put_object(Bucket=landing, Key="openem-network/datasets/p/raw_files/a", Body=b"landed")
    s3.put_object(Bucket=retrieval, Key="some/datablock.tar", Body=b"retrieved")

    def url(bucket: str, key: str) -> str:
        return presigned_get_url(enforcing_s3.url, S3_TEST_REGION, accounts["presign"], bucket, key, 600)

    assert httpx.get(url(retrieval, "some/datablock.tar")).content == b"retrieved"
    assert httpx.get(url(landing, "openem-network/datasets/p/raw_files/a")).status_code == 403
    put_url = enforcing_s3.s3(accounts["presign"]).generate_presigned_url(
        "put_object", Params={"Bucket": retrieval, "Key": "some/datablock.tar"}, ExpiresIn=600
    )
    assert httpx.put(put_url, content=b"overwritten").status_code == 403
    assert httpx.get(url(retrieval, "some/datablock.tar") + "x").status_code == 403  # signature no longer matches
    assert s3.get_object(Bucket=retrieval, Key="some/datablock.tar")["Body"].read() == b"retrieved"


def test_archiver_account_cannot_create_buckets_or_reach_other_buckets(
    pipeline, enforcing_s3, accounts, s3, unique_name
):
    archiver = enforcing_s3.s3(accounts["archiver"])
    other = f"{unique_name}-other"
    s3.create_bucket(Bucket=other, CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    s3.put_object(Bucket=other, Key="k", Body=b"x")

    assert denied(
        archiver.create_bucket,
        Bucket=f"{unique_name}-new",
        CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION},
    )
    # MinIO denies ListBuckets without s3:ListAllMyBuckets; SeaweedFS lists only the buckets the account may reach.
    with contextlib.suppress(ClientError):
        assert other not in {b["Name"] for b in archiver.list_buckets()["Buckets"]}
    assert denied(archiver.list_objects_v2, Bucket=other)
    assert denied(archiver.get_object, Bucket=other, Key="k")
    assert denied(archiver.delete_object, Bucket=other, Key="k")


def test_config_refuses_an_archiver_account_whose_policy_names_other_buckets(pipeline, unique_name):
    from prefect.variables import Variable

    pipeline.vars_file.write_text(
        pipeline.vars_file.read_text().replace(f"{unique_name}-landing", f"{unique_name}-elsewhere")
    )
    with pytest.raises(ConfigError) as refused:
        seed(read_inputs(pipeline.vars_file, pipeline.limits_file, pipeline.secrets_dir))
    message = str(refused.value)
    assert "\n" not in message
    assert f"S3 account archiver ({ARCHIVER_S3.files}) cannot list bucket '{unique_name}-elsewhere'" in message
    assert "AccessDenied" in message and "archiver.json" in message and '"S3 accounts"' in message
    assert Variable.get("s3_landingzone_bucket") == f"{unique_name}-landing"  # nothing written


def test_config_refuses_a_presign_secret_that_s3_does_not_accept(pipeline, accounts):
    (pipeline.secrets_dir / PRESIGN_S3.password.filename).write_text("not-the-secret-key\n")
    with pytest.raises(ConfigError) as refused:
        seed(read_inputs(pipeline.vars_file, pipeline.limits_file, pipeline.secrets_dir))
    message = str(refused.value)
    assert f"S3 account presign ({PRESIGN_S3.files})" in message and "SignatureDoesNotMatch" in message
    assert "not-the-secret-key" not in message and accounts["presign"].secret_key not in message
