"""The shipped S3 policies (backend/docker/s3-policies/) against an S3 server that enforces them.

moto's server checks IAM policies once INITIAL_NO_AUTH_ACTION_COUNT requests have gone by: the first
three create an all-powerful user standing in for MinIO's root account, which then creates the archiver
and presign accounts with the shipped policy documents (bucket names substituted). The flows run for
real with those accounts. moto cannot check presigned (query-signed) requests under enforcement (it
answers 500), so a download URL is checked for the account that signed it and its object is fetched
with that account's header-signed GET: the permission the URL carries.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from archiver import local_services
from archiver.config.errors import ConfigError
from archiver.config.secrets import ARCHIVER_S3, MINIO_ROOT, PRESIGN_S3, S3Account
from archiver.config.seeding import read_inputs, seed
from archiver.flows.archive import archive_datasets_flow
from archiver.flows.retrieve import retrieve_datasets_flow
from archiver.flows.test_dataset import create_test_dataset_flow
from archiver.storage.s3 import S3Credentials, error_code, s3_client
from botocore.exceptions import ClientError

from tests.conftest import S3_TEST_REGION

pytestmark = pytest.mark.integration
POLICIES = Path(__file__).resolve().parents[2] / "docker" / "s3-policies"
SHIPPED_BUCKETS = {"landingzone": "landing", "retrieval": "retrieval"}  # bucket in the files -> suffix in tests


class EnforcingS3:
    def __init__(self, url: str):
        self.url = url
        iam = self._client("iam", S3Credentials("bootstrap", "bootstrap"))
        # The three unchecked requests: MinIO's root account stand-in.
        self.root = self._user(iam, "minio-root", {"Version": "2012-10-17",
                                                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        self.iam = self._client("iam", self.root)

    def _client(self, service: str, credentials: S3Credentials):
        if service == "s3":
            return s3_client(self.url, S3_TEST_REGION, credentials)
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=S3_TEST_REGION,
                            aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key)

    @staticmethod
    def _user(iam, name: str, policy: dict) -> S3Credentials:
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def account(self, name: str, policy: dict) -> S3Credentials:
        return self._user(self.iam, name, policy)

    def s3(self, credentials: S3Credentials):
        return self._client("s3", credentials)


def shipped_policy(account: S3Account, buckets: dict[str, str]) -> dict:
    """The account's policy file with its bucket names replaced as `buckets` says."""
    text = (POLICIES / f"{account.name}.json").read_text()
    for shipped, actual in buckets.items():
        text = text.replace(f"arn:aws:s3:::{shipped}\"", f"arn:aws:s3:::{actual}\"")
        text = text.replace(f"arn:aws:s3:::{shipped}/", f"arn:aws:s3:::{actual}/")
    return json.loads(text)


@pytest.fixture(scope="module")
def enforcing_s3(tmp_path_factory) -> EnforcingS3:
    log_dir = tmp_path_factory.mktemp("enforcing-s3")
    with local_services.s3_server(log_dir, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:
        yield EnforcingS3(server.url)


@pytest.fixture
def s3_endpoint(enforcing_s3) -> str:
    return enforcing_s3.url


@pytest.fixture
def s3(enforcing_s3):
    return enforcing_s3.s3(enforcing_s3.root)


@pytest.fixture
def accounts(enforcing_s3, unique_name) -> dict[str, S3Credentials]:
    buckets = {shipped: f"{unique_name}-{suffix}" for shipped, suffix in SHIPPED_BUCKETS.items()}
    return {account.name: enforcing_s3.account(f"{unique_name}-{account.name}", shipped_policy(account, buckets))
            for account in (ARCHIVER_S3, PRESIGN_S3)}


def write_account(secrets_dir: Path, account: S3Account, credentials: S3Credentials) -> None:
    (secrets_dir / account.user.filename).write_text(credentials.access_key + "\n")
    (secrets_dir / account.password.filename).write_text(credentials.secret_key + "\n")


@pytest.fixture
def pipeline_secrets_dir(tmp_path, scicat_secrets_dir, enforcing_s3, accounts) -> Path:
    secrets_dir = tmp_path / "secrets-with-s3-accounts"
    shutil.copytree(scicat_secrets_dir, secrets_dir)
    write_account(secrets_dir, MINIO_ROOT, enforcing_s3.root)
    write_account(secrets_dir, ARCHIVER_S3, accounts["archiver"])
    write_account(secrets_dir, PRESIGN_S3, accounts["presign"])
    return secrets_dir


def denied(call, *args, **kwargs) -> bool:
    try:
        call(*args, **kwargs)
    except ClientError as e:
        return error_code(e) == "AccessDenied"
    return False


def test_flows_archive_and_retrieve_with_their_own_accounts_and_urls_are_signed_by_the_presign_account(
    pipeline, enforcing_s3, accounts,
):
    presign = enforcing_s3.s3(accounts["presign"])
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
        bucket, key = unquote(url.path).lstrip("/").split("/", 1)
        content = presign.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(content) == entry["size"]
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            for member in tar.getmembers():
                retrieved[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    assert retrieved == originals


def test_presign_account_reads_the_retrieval_bucket_and_nothing_else(pipeline, enforcing_s3, accounts, s3):
    landing, retrieval = pipeline.settings.minio.landingzone_bucket, pipeline.settings.minio.retrieval_bucket
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


def test_archiver_account_cannot_create_buckets_or_reach_other_buckets(pipeline, enforcing_s3, accounts, s3,
                                                                     unique_name):
    archiver = enforcing_s3.s3(accounts["archiver"])
    other = f"{unique_name}-other"
    s3.create_bucket(Bucket=other, CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    s3.put_object(Bucket=other, Key="k", Body=b"x")

    assert denied(archiver.create_bucket, Bucket=f"{unique_name}-new",
                  CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    assert denied(archiver.list_buckets)
    assert denied(archiver.list_objects_v2, Bucket=other)
    assert denied(archiver.get_object, Bucket=other, Key="k")
    assert denied(archiver.delete_object, Bucket=other, Key="k")


def test_config_refuses_an_archiver_account_whose_policy_names_other_buckets(pipeline, unique_name):
    from prefect.variables import Variable

    pipeline.vars_file.write_text(pipeline.vars_file.read_text().replace(f"{unique_name}-landing", f"{unique_name}-elsewhere"))
    with pytest.raises(ConfigError) as refused:
        seed(read_inputs(pipeline.vars_file, pipeline.limits_file, pipeline.secrets_dir))
    message = str(refused.value)
    assert "\n" not in message
    assert f"S3 account archiver ({ARCHIVER_S3.files}) cannot list bucket '{unique_name}-elsewhere'" in message
    assert "AccessDenied" in message and "archiver.json" in message and '"S3 accounts"' in message
    assert Variable.get("minio_landingzone_bucket") == f"{unique_name}-landing"  # nothing written


def test_config_refuses_a_presign_secret_that_s3_does_not_accept(pipeline, accounts):
    (pipeline.secrets_dir / PRESIGN_S3.password.filename).write_text("not-the-secret-key\n")
    with pytest.raises(ConfigError) as refused:
        seed(read_inputs(pipeline.vars_file, pipeline.limits_file, pipeline.secrets_dir))
    message = str(refused.value)
    assert f"S3 account presign ({PRESIGN_S3.files})" in message and "SignatureDoesNotMatch" in message
    assert "not-the-secret-key" not in message and accounts["presign"].secret_key not in message
