"""`archiver config`: seed Prefect with variables, secret blocks, tag limits and the zombie-run automation,
and create the buckets.

Everything is read and validated, and the Prefect API and S3 are asked with the
configured credentials, before anything is written, so a bad file, a missing
secret or an unreachable service changes nothing (an unreachable SciCat is a
warning: `archiver config` writes nothing there); every write is an upsert, so a re-run after
any failure finishes the job, and a run with nothing to do says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from archiver.config.automations import zombie_automation
from archiver.config.errors import ConfigError
from archiver.config.limits import LIMITS_VARIABLE, ConcurrencyLimits, load_limits_file
from archiver.config.secrets import (
    ARCHIVER_S3,
    DEFAULT_SECRETS_DIR,
    LTS_S3,
    MINIO_ROOT,
    OBSOLETE_SECRET_BLOCKS,
    PREFECT_SECRETS,
    PRESIGN_S3,
    SECRETS,
    S3Account,
    read_secret,
    read_secret_block,
)
from archiver.config.settings import (
    LEGACY_KEYS,
    Settings,
    flat_values,
    known_keys,
    load_vars_file,
    variable_name,
    with_environment_overrides,
)
from archiver.storage.s3 import S3Credentials, error_code, s3_client


@dataclass
class SeedReport:
    say: Callable[[str], None] = lambda line: None
    changes: list[str] = field(default_factory=list)
    unchanged: int = 0

    def record(self, what: str, action: str | None) -> None:
        if action is None:
            self.unchanged += 1
        else:
            self.changes.append(f"{what}: {action}")
            self.say(f"{what}: {action}")


@dataclass(frozen=True)
class SeedInputs:
    settings: Settings
    limits: ConcurrencyLimits
    secrets: dict[str, str]  # block name -> value
    minio_root: S3Credentials  # creates the buckets; never stored in Prefect

    def __repr__(self) -> str:
        return f"SeedInputs(settings=..., limits=..., secrets=<{len(self.secrets)} hidden>, minio_root=<hidden>)"

    def s3_credentials(self, account: S3Account) -> S3Credentials:
        return S3Credentials(self.secrets[account.user.prefect_block], self.secrets[account.password.prefect_block])


def read_inputs(
    vars_file: Path,
    limits_file: Path,
    secrets_dir: Path = DEFAULT_SECRETS_DIR,
    environ: Mapping[str, str] | None = None,
) -> SeedInputs:
    """The files' contents; keys of the variables file set in `environ` override it (the stack's
    per-site values, e.g. SCICAT_ENDPOINT of the development SciCat)."""
    settings = load_vars_file(vars_file)
    if environ is not None:
        settings = with_environment_overrides(settings, environ, str(vars_file))
    return SeedInputs(
        settings=settings,
        limits=load_limits_file(limits_file),
        secrets={spec.prefect_block: read_secret(spec, secrets_dir) for spec in PREFECT_SECRETS},
        minio_root=S3Credentials.from_secret_files(MINIO_ROOT, secrets_dir),
    )


def seed(inputs: SeedInputs, say: Callable[[str], None] = lambda line: None) -> SeedReport:
    from prefect.client.orchestration import get_client

    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "PREFECT_API_URL is not set; point it at the Prefect server's API, e.g. http://prefect-server:4200/api"
        )
    report = SeedReport(say)
    with get_client(sync_client=True) as client:
        # Every service is checked before the first write: a wrong endpoint or secret changes nothing.
        unreachable = client.api_healthcheck()
        if unreachable is not None:
            raise ConfigError(f"Prefect API at {client.api_url} is not reachable: {unreachable}")
        client.hello()  # unlike the health check, refused without the server's credentials
        s3 = _checked_s3(inputs)
        _check_s3_accounts(inputs)
        _check_lts_account(inputs)
        _check_scicat(inputs, report)
        _seed_variables(client, inputs.settings, inputs.limits, report)
        _seed_secret_blocks(inputs.secrets, report)
        _delete_obsolete_secret_blocks(client, report)
        _seed_limits(client, inputs.limits, report)
        _seed_automations(client, [zombie_automation(inputs.settings)], report)
    _seed_buckets(s3, inputs, report)
    return report


def _checked_s3(inputs: SeedInputs):
    """A client of MinIO's root account that has been answered (ConfigError otherwise)."""
    from botocore.exceptions import BotoCoreError, ClientError

    minio = inputs.settings.s3
    s3 = s3_client(minio.endpoint, minio.region, inputs.minio_root)
    try:
        s3.list_buckets()
    except (BotoCoreError, ClientError) as e:
        raise ConfigError(
            f"S3 at {minio.endpoint} (S3_ENDPOINT) does not answer MinIO's root account: {e}; "
            f"nothing was written. Check the endpoint and the {MINIO_ROOT.files} secrets"
        ) from None
    return s3


PREFLIGHT_KEY = "archiver-config-preflight/no-such-object"


def _check_s3_accounts(inputs: SeedInputs) -> None:
    """The flows' account can list the landing zone and the presign account is known to S3 (ConfigError otherwise).
    A bucket not there yet is fine: the root account creates it next."""
    minio = inputs.settings.s3
    probes = (
        (
            ARCHIVER_S3,
            f"list bucket {minio.landingzone_bucket!r}",
            {"NoSuchBucket"},
            lambda s3: s3.list_objects_v2(Bucket=minio.landingzone_bucket, MaxKeys=1),
        ),
        # Without s3:ListBucket a missing key may be AccessDenied: the credentials were still accepted.
        (
            PRESIGN_S3,
            f"reach bucket {minio.retrieval_bucket!r}",
            {"NoSuchBucket", "NoSuchKey", "AccessDenied"},
            lambda s3: s3.get_object(Bucket=minio.retrieval_bucket, Key=PREFLIGHT_KEY)["Body"].close(),
        ),
    )
    for account, what, fine, probe in probes:
        problem = _probe_failure(probe, s3_client(minio.endpoint, minio.region, inputs.s3_credentials(account)), fine)
        if problem:
            raise ConfigError(
                f"S3 account {account.name} ({account.files}) cannot {what} at {minio.endpoint}: {problem}; nothing "
                f"was written. Create it with policy backend/docker/s3-policies/{account.name}.json, bucket names as "
                'in prefect-vars.toml (docs/deployment.md, "S3 accounts")'
            )


def _check_lts_account(inputs: SeedInputs) -> None:
    """On LTS_BACKEND "s3": the LTS account can reach the LTS bucket, which the operator creates (ConfigError)."""
    lts = inputs.settings.lts
    if lts.backend != "s3":
        return
    assert lts.s3_endpoint is not None  # the section requires it with LTS_BACKEND "s3"
    s3 = s3_client(lts.s3_endpoint, lts.s3_region, inputs.s3_credentials(LTS_S3))
    problem = _probe_failure(lambda s3: s3.list_objects_v2(Bucket=lts.s3_bucket, MaxKeys=1), s3, set())
    if problem:
        raise ConfigError(
            f"S3 account {LTS_S3.name} ({LTS_S3.files}) cannot list the LTS bucket {lts.s3_bucket!r} "
            f"(LTS_S3_BUCKET) at {lts.s3_endpoint}: {problem}; nothing was written. Create the bucket and give the "
            'account the rights docs/lts-backends.md lists ("Deploying the cold store")'
        )


def _probe_failure(probe, s3, fine_codes: set[str]) -> str | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        probe(s3)
    except ClientError as e:
        return None if error_code(e) in fine_codes else str(e)
    except BotoCoreError as e:
        return str(e)
    return None


def _check_scicat(inputs: SeedInputs, report: SeedReport) -> None:
    """SciCat is not written by `archiver config`, but flows fail without it: a warning, not an error."""
    import httpx

    endpoint = inputs.settings.scicat.endpoint
    try:
        httpx.get(endpoint, timeout=10)
    except httpx.HTTPError as e:
        report.say(
            f"warning: SciCat at {endpoint} (SCICAT_ENDPOINT) does not answer ({type(e).__name__}: {e}); "
            "archive and retrieve jobs will fail until it does"
        )


def _seed_variables(client, settings: Settings, limits: ConcurrencyLimits, report: SeedReport) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    existing = {v.name: v.value for v in client.read_variables()}
    wanted = {variable_name(key): value for key, value in flat_values(settings).items()}
    wanted[LIMITS_VARIABLE] = limits.model_dump(mode="json")
    for name, value in wanted.items():
        if name not in existing:
            client.create_variable(VariableCreate(name=name, value=value))
            action = "created"
        elif existing[name] != value:
            client.update_variable(VariableUpdate(name=name, value=value))
            action = (
                f"updated (Prefect had {existing[name]!r}, the file says {value!r}; a change made in the UI "
                "is reset: make it in the file to keep it)"
            )
        else:
            action = None
        report.record(f"variable {name}", action)
    # A key taken out of the file (or left empty) must not keep the value an earlier run gave it.
    ours = {variable_name(key) for key in [*LEGACY_KEYS, *known_keys()]}
    for name in sorted(ours & existing.keys() - wanted.keys()):
        client.delete_variable_by_name(name)
        report.record(f"variable {name}", "deleted (not in the file any more: its default applies)")


def _seed_secret_blocks(secrets: dict[str, str], report: SeedReport) -> None:
    from prefect.blocks.system import Secret

    for name, value in secrets.items():
        try:
            current = read_secret_block(name)
        except ValueError:  # no such block yet
            current = None
        if current == value:
            action = None
        else:
            Secret(value=value).save(name, overwrite=True)
            action = "created" if current is None else "updated"
        report.record(f"secret block {name}", action)  # never the value


def _delete_obsolete_secret_blocks(client, report: SeedReport) -> None:
    from prefect.exceptions import ObjectNotFound

    deleted = []
    for name in OBSOLETE_SECRET_BLOCKS:
        try:
            document = client.read_block_document_by_name(name, "secret", include_secrets=False)
        except ObjectNotFound:
            continue
        client.delete_block_document(document.id)
        deleted.append(name)
    if deleted:
        report.record(
            f"secret block(s) {', '.join(deleted)}",
            "deleted (obsolete: MinIO's root account is no longer stored in Prefect)",
        )


def _seed_limits(client, limits: ConcurrencyLimits, report: SeedReport) -> None:
    from prefect.exceptions import ObjectNotFound

    for name, tag_limit in limits.by_name().items():
        try:
            current = client.read_concurrency_limit_by_tag(tag_limit.tag).concurrency_limit
        except ObjectNotFound:
            current = None
        if current == tag_limit.limit:
            action = None
        else:
            client.create_concurrency_limit(tag=tag_limit.tag, concurrency_limit=tag_limit.limit)
            action = "created" if current is None else f"updated ({current} -> {tag_limit.limit})"
        report.record(f"concurrency limit {name} (tag {tag_limit.tag})", action)


def _seed_automations(client, wanted: list, report: SeedReport) -> None:
    """Find each automation by name; create it, update it when it differs, or keep it."""
    for automation in wanted:
        found = client.read_automations_by_name(automation.name)
        for extra in found[1:]:  # made twice by hand or by a race: keep one
            client.delete_automation(extra.id)
        if not found:
            client.create_automation(automation)
            action = "created"
        elif _comparable(found[0]) != _comparable(automation):
            client.update_automation(found[0].id, automation)
            action = "updated"
        else:
            action = None
        report.record(f"automation {automation.name!r}", action)


def _comparable(automation) -> dict:
    from prefect.events.schemas.automations import AutomationCore

    fields = set(AutomationCore.model_fields) - {"owner_resource"}
    return _sorted_sets(AutomationCore.model_validate(automation.model_dump(include=fields)).model_dump(mode="json"))


def _sorted_sets(value):
    """JSON with the lists that came from sets (event names, labels) in one order."""
    if isinstance(value, dict):
        return {key: _sorted_sets(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_sorted_sets(item) for item in value]
        return sorted(items) if all(isinstance(item, str) for item in items) else items
    return value


def _create_bucket(s3, bucket: str, location: dict) -> bool:
    """False when the bucket was there already: a listing shows only some buckets on some S3 services (the
    offline stand-in lists none to its admin account), so a second run must not fail on them."""
    from botocore.exceptions import ClientError

    try:
        s3.create_bucket(Bucket=bucket, **location)
    except ClientError as e:
        if error_code(e) == "BucketAlreadyOwnedByYou":
            return False
        raise
    return True


def _seed_buckets(s3, inputs: SeedInputs, report: SeedReport) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    minio = inputs.settings.s3

    for bucket in (minio.landingzone_bucket, minio.retrieval_bucket):
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if bucket in existing:
                action = None
            else:
                location = (
                    {}
                    if minio.region == "us-east-1"
                    else {"CreateBucketConfiguration": {"LocationConstraint": minio.region}}
                )
                action = "created" if _create_bucket(s3, bucket, location) else None
        except (BotoCoreError, ClientError) as e:
            raise ConfigError(f"S3 at {minio.endpoint}: cannot create bucket {bucket!r}: {e}") from None
        report.record(f"bucket {bucket}", action)
    _seed_abort_uploads_rule(s3, minio.retrieval_bucket, minio.abort_incomplete_uploads_days, report)
    _seed_abort_uploads_rule(
        s3,
        minio.landingzone_bucket,
        inputs.settings.upload.abort_incomplete_days,
        report,
        left_by="uploads through the archiver API abandoned by their uploader",
        otherwise="`archiver upload-cleanup`",
    )


ABORT_UPLOADS_RULE_ID = "archiver-abort-incomplete-uploads"


def _seed_abort_uploads_rule(
    s3,
    bucket: str,
    days: int,
    report: SeedReport,
    left_by: str = "killed retrievals",
    otherwise: str = "a retrieval of the same dataset",
) -> None:
    """A lifecycle rule aborting multipart uploads left unfinished for `days` (a killed retrieval's, an
    abandoned upload's); the bucket's other rules are kept. A server without lifecycle support gets a
    warning, not an error."""
    from botocore.exceptions import BotoCoreError, ClientError

    wanted = {
        "ID": ABORT_UPLOADS_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
    }
    what = f"lifecycle rule of bucket {bucket} (abort uploads unfinished after {days} day(s))"
    try:
        try:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        current = next((r for r in rules if r.get("ID") == ABORT_UPLOADS_RULE_ID), None)
        if current is not None and _same_rule(current, wanted):
            report.record(what, None)
            return
        others = [r for r in rules if r.get("ID") != ABORT_UPLOADS_RULE_ID]
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [*others, wanted]})
    except (BotoCoreError, ClientError) as e:
        report.say(
            f"warning: {what} not set, the S3 server refused it ({e}); unfinished uploads of {left_by} "
            f"are then only aborted by {otherwise}"
        )
        return
    report.record(what, "created" if current is None else "updated")


def _same_rule(current: dict, wanted: dict) -> bool:
    return (
        current.get("Status") == wanted["Status"]
        and current.get("AbortIncompleteMultipartUpload") == wanted["AbortIncompleteMultipartUpload"]
        and (current.get("Filter") or {}).get("Prefix", "") == ""
        and (current.get("Prefix") or "") == ""
    )


__all__ = ["SECRETS", "SeedInputs", "SeedReport", "read_inputs", "seed"]
