"""`archiver config` against a real Prefect server (PostgreSQL) and a real S3 server."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from archiver.config.limits import load_limits_file
from archiver.config.runtime import load_run_configuration
from archiver.config.secrets import ARCHIVER_S3, LTS_S3, PREFECT_SECRETS, read_secret
from archiver.config.settings import flat_values, load_vars_file, variable_name
from tests.conftest import S3_TEST_ACCOUNTS, S3_TEST_REGION, write_s3_account

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def workdir(tmp_path, s3_endpoint, scicat_url, unique_name, secrets_dir):
    """A folder like the repo's top level, pointing at the test S3 and SciCat servers, with fresh buckets."""
    vars_data = tomllib.loads((REPO / "prefect-vars.toml").read_text())
    vars_data["s3"]["S3_ENDPOINT"] = s3_endpoint
    vars_data["scicat"]["SCICAT_ENDPOINT"] = scicat_url
    vars_data["s3"]["S3_LANDINGZONE_BUCKET"] = f"{unique_name}-landing"
    vars_data["s3"]["S3_RETRIEVAL_BUCKET"] = f"{unique_name}-retrieval"
    vars_data["lts"]["LTS_STORAGE_ROOT"] = f"/lts/{unique_name}"
    (tmp_path / "prefect-vars.toml").write_text(tomli_w.dumps(vars_data))
    shutil.copy(REPO / "concurrency-limits.toml", tmp_path / "concurrency-limits.toml")
    shutil.copytree(secrets_dir, tmp_path / ".secrets")
    return tmp_path


def run_config(workdir: Path, api_url: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archiver.cli", "config"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PREFECT_API_URL": api_url, **env},
    )


def secret_values(workdir: Path) -> list[str]:
    return [read_secret(spec, workdir / ".secrets", {}) for spec in PREFECT_SECRETS]


def test_config_seeds_everything_and_second_run_changes_nothing(workdir, prefect_api_url, s3):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    first = run_config(workdir, prefect_api_url)
    assert first.returncode == 0, first.stderr
    assert "change(s) applied" in first.stdout

    expected_vars = flat_values(load_vars_file(workdir / "prefect-vars.toml"))
    with get_client(sync_client=True) as client:
        stored = {v.name: v.value for v in client.read_variables()}
        for key, value in expected_vars.items():
            assert stored[variable_name(key)] == value, key
        for name, tag_limit in load_limits_file(workdir / "concurrency-limits.toml").by_name().items():
            assert client.read_concurrency_limit_by_tag(tag_limit.tag).concurrency_limit == tag_limit.limit, name
    for spec in PREFECT_SECRETS:
        assert Secret.load(spec.block).get() == read_secret(spec, workdir / ".secrets", {})
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {expected_vars["S3_LANDINGZONE_BUCKET"], expected_vars["S3_RETRIEVAL_BUCKET"]} <= buckets

    second = run_config(workdir, prefect_api_url)
    assert second.returncode == 0, second.stderr
    assert "no changes" in second.stdout
    assert second.stdout.count("\n") == 1

    for output in (first.stdout + first.stderr, second.stdout + second.stderr):
        for value in secret_values(workdir):
            assert value not in output


def test_changed_limit_and_secret_are_applied_by_next_run(workdir, prefect_api_url):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    assert run_config(workdir, prefect_api_url).returncode == 0
    limits = tomllib.loads((workdir / "concurrency-limits.toml").read_text())
    limits["MOVE_TO_LTS_LIMIT"]["limit"] = 3
    (workdir / "concurrency-limits.toml").write_text(tomli_w.dumps(limits))
    (workdir / ".secrets" / "scicatpass.txt").write_text("rotated-password-value\n")

    result = run_config(workdir, prefect_api_url)
    assert result.returncode == 0, result.stderr
    changes = result.stdout.splitlines()[:-1]
    assert sorted(change.split(" (")[0] for change in changes) == [
        "concurrency limit MOVE_TO_LTS_LIMIT",
        "secret block scicat-password: updated",
        "variable concurrency_limits: updated",
    ]
    assert "concurrency limit MOVE_TO_LTS_LIMIT (tag move-datablocks-to-lts): updated (1 -> 3)" in changes
    assert "rotated-password-value" not in result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag("move-datablocks-to-lts").concurrency_limit == 3
    assert Secret.load("scicat-password").get() == "rotated-password-value"


def test_zombie_automation_seeded_once_and_updated_when_window_changes(workdir, prefect_api_url):
    from prefect.client.orchestration import get_client

    from archiver.config.automations import ZOMBIE_AUTOMATION

    def automations():
        with get_client(sync_client=True) as client:
            return client.read_automations_by_name(ZOMBIE_AUTOMATION)

    def set_window(seconds: int) -> None:
        data = tomllib.loads((workdir / "prefect-vars.toml").read_text())
        data["archiver"]["ARCHIVER_ZOMBIE_WINDOW_S"] = seconds
        (workdir / "prefect-vars.toml").write_text(tomli_w.dumps(data))

    set_window(77)
    first = run_config(workdir, prefect_api_url)
    assert first.returncode == 0, first.stderr
    [automation] = automations()
    assert automation.trigger.within.total_seconds() == 77
    assert automation.trigger.posture.value == "Proactive"
    assert [a.type for a in automation.actions] == ["change-flow-run-state"]
    assert automation.actions[0].state.value == "CRASHED"

    again = run_config(workdir, prefect_api_url)
    assert f"automation {ZOMBIE_AUTOMATION!r}" not in again.stdout
    set_window(95)
    changed = run_config(workdir, prefect_api_url)
    assert changed.returncode == 0, changed.stderr
    assert f"automation {ZOMBIE_AUTOMATION!r}: updated" in changed.stdout.splitlines()
    [automation] = automations()
    assert automation.trigger.within.total_seconds() == 95


def test_window_not_longer_than_heartbeat_is_refused(workdir, prefect_api_url):
    data = tomllib.loads((workdir / "prefect-vars.toml").read_text())
    data["archiver"].update(ARCHIVER_HEARTBEAT_S=60, ARCHIVER_ZOMBIE_WINDOW_S=60)
    (workdir / "prefect-vars.toml").write_text(tomli_w.dumps(data))
    result = run_config(workdir, prefect_api_url)
    assert result.returncode != 0
    assert (
        "ARCHIVER_ZOMBIE_WINDOW_S (60) must be longer than ARCHIVER_HEARTBEAT_S (60)" in result.stderr + result.stdout
    )


def test_missing_secret_file_fails_clearly_and_applies_nothing(workdir, prefect_api_url, unique_name):
    from prefect.client.orchestration import get_client

    (workdir / ".secrets" / "miniopass.txt").unlink()
    result = run_config(workdir, prefect_api_url)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "miniopass.txt" in result.stderr and "MINIO_PASSWORD_FILE" in result.stderr
    with get_client(sync_client=True) as client:
        stored = client.read_variable_by_name("lts_storage_root")
    assert stored is None or stored.value != f"/lts/{unique_name}"


def test_secret_file_named_by_file_variable(workdir, prefect_api_url, tmp_path_factory):
    from prefect.blocks.system import Secret

    # The key must be one S3 knows: `archiver config` asks S3 with it before writing anything.
    access_key = S3_TEST_ACCOUNTS[ARCHIVER_S3].access_key
    elsewhere = tmp_path_factory.mktemp("compose-secrets") / "s3_archiver_user"
    elsewhere.write_text(access_key + "\n")
    (workdir / ".secrets" / ARCHIVER_S3.user.filename).write_text("not-the-file-named-by-the-variable\n")
    result = run_config(workdir, prefect_api_url, S3_ARCHIVER_USER_FILE=str(elsewhere))
    assert result.returncode == 0, result.stderr
    assert Secret.load("s3-archiver-user").get() == access_key


def test_obsolete_root_account_blocks_are_deleted_saying_so_once(workdir, prefect_api_url):
    from prefect.blocks.system import Secret

    root_password = (workdir / ".secrets" / "miniopass.txt").read_text().strip()
    Secret(value="old-root-user").save("minio-user", overwrite=True)
    Secret(value=root_password).save("minio-password", overwrite=True)
    first = run_config(workdir, prefect_api_url)
    assert first.returncode == 0, first.stderr
    said = [line for line in first.stdout.splitlines() if "minio-user" in line]
    assert said == [
        "secret block(s) minio-user, minio-password: deleted (obsolete: MinIO's root account is no longer "
        "stored in Prefect)"
    ]
    assert root_password not in first.stdout + first.stderr and "old-root-user" not in first.stdout
    for name in ("minio-user", "minio-password"):
        with pytest.raises(ValueError):
            Secret.load(name)
    second = run_config(workdir, prefect_api_url)
    assert "minio-" not in second.stdout


def test_unreachable_api_is_one_clear_error(workdir):
    result = run_config(workdir, "http://127.0.0.1:9/api")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "http://127.0.0.1:9/api" in result.stderr and "not reachable" in result.stderr


def test_bad_vars_file_is_one_clear_error(workdir, prefect_api_url):
    text = (workdir / "prefect-vars.toml").read_text().replace("[lts]\n", "[lts]\nLTS_TYPO = 1\n")
    (workdir / "prefect-vars.toml").write_text(text)
    result = run_config(workdir, prefect_api_url)
    assert result.returncode != 0
    assert "prefect-vars.toml: [lts] LTS_TYPO: unknown key" in result.stderr


def test_flow_side_loads_settings_and_limits_once_with_environment_on_top(workdir, prefect_api_url):
    assert run_config(workdir, prefect_api_url).returncode == 0
    from_file = load_vars_file(workdir / "prefect-vars.toml")
    loaded = load_run_configuration(environ={})
    assert loaded.settings == from_file
    assert loaded.limits == load_limits_file(workdir / "concurrency-limits.toml")
    overridden = load_run_configuration(environ={"LTS_STORAGE_ROOT": "/elsewhere"}).settings
    assert str(overridden.lts.storage_root) == "/elsewhere"
    assert overridden.s3 == from_file.s3


def lifecycle_rules(s3, bucket: str) -> list[dict]:
    return s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]


def test_retrieval_bucket_gets_an_abort_uploads_rule_once_and_keeps_other_rules(workdir, prefect_api_url, s3):
    bucket = tomllib.loads((workdir / "prefect-vars.toml").read_text())["s3"]["S3_RETRIEVAL_BUCKET"]
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    site_rule = {"ID": "site-expiry", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 3}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [site_rule]})

    first = run_config(workdir, prefect_api_url)
    assert first.returncode == 0, first.stderr
    assert f"lifecycle rule of bucket {bucket} (abort uploads unfinished after 1 day(s)): created" in first.stdout
    rules = {r["ID"]: r for r in lifecycle_rules(s3, bucket)}
    assert rules["archiver-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules["site-expiry"]["Expiration"] == {"Days": 3}

    second = run_config(workdir, prefect_api_url)
    assert "no changes" in second.stdout and "lifecycle" not in second.stdout

    data = tomllib.loads((workdir / "prefect-vars.toml").read_text())
    data["s3"]["S3_ABORT_INCOMPLETE_UPLOADS_DAYS"] = 3
    (workdir / "prefect-vars.toml").write_text(tomli_w.dumps(data))
    third = run_config(workdir, prefect_api_url)
    assert "(abort uploads unfinished after 3 day(s)): updated" in third.stdout
    rules = {r["ID"]: r for r in lifecycle_rules(s3, bucket)}
    assert rules["archiver-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
    assert len(rules) == 2


def _set_var(workdir: Path, section: str, key: str, value) -> None:
    data = tomllib.loads((workdir / "prefect-vars.toml").read_text())
    data[section][key] = value
    (workdir / "prefect-vars.toml").write_text(tomli_w.dumps(data))


def test_unreachable_s3_writes_nothing_and_names_the_setting(workdir, prefect_api_url, unique_name):
    from prefect.client.orchestration import get_client

    from archiver.local_services import free_port

    _set_var(workdir, "s3", "S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = run_config(workdir, prefect_api_url)
    assert result.returncode != 0
    assert "S3_ENDPOINT" in result.stderr and "nothing was written" in result.stderr, result.stderr
    assert result.stdout == ""
    with get_client(sync_client=True) as client:
        stored = client.read_variable_by_name("lts_storage_root")
    assert stored is None or stored.value != f"/lts/{unique_name}"


def test_unreachable_scicat_is_a_warning(workdir, prefect_api_url):
    from archiver.local_services import free_port

    _set_var(workdir, "scicat", "SCICAT_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = run_config(workdir, prefect_api_url)
    assert result.returncode == 0, result.stderr
    assert "warning: SciCat at" in result.stdout and "SCICAT_ENDPOINT" in result.stdout


def test_a_value_changed_in_the_ui_is_reset_saying_so(workdir, prefect_api_url):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableUpdate

    assert run_config(workdir, prefect_api_url).returncode == 0
    with get_client(sync_client=True) as client:  # as an operator would in the UI
        client.update_variable(VariableUpdate(name="archiver_target_size_mb", value=7))
    result = run_config(workdir, prefect_api_url)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("variable archiver_target_size_mb")]
    assert line.startswith("variable archiver_target_size_mb: updated (Prefect had 7, the file says")
    assert "change made in the UI is reset" in line


def test_a_key_taken_out_of_the_file_is_deleted_from_prefect_so_its_default_applies(workdir, prefect_api_url):
    vars_file = workdir / "prefect-vars.toml"
    default = vars_file.read_text()
    data = tomllib.loads(default)
    data["lts"]["LTS_FILE_UID"] = 4321
    vars_file.write_text(tomli_w.dumps(data))
    assert run_config(workdir, prefect_api_url).returncode == 0
    assert load_run_configuration(environ={}).settings.lts.file_uid == 4321

    vars_file.write_text(default)
    result = run_config(workdir, prefect_api_url)
    assert result.returncode == 0, result.stderr
    assert "variable lts_file_uid: deleted (not in the file any more: its default applies)" in result.stdout
    assert load_run_configuration(environ={}).settings == load_vars_file(vars_file)


def test_a_cold_lts_needs_an_lts_account_that_reaches_its_bucket(
    workdir, prefect_api_url, s3_endpoint, s3, unique_name
):
    from prefect.blocks.system import Secret

    bucket = f"{unique_name}-lts"
    data = tomllib.loads((workdir / "prefect-vars.toml").read_text())
    data["lts"].update(
        LTS_BACKEND="s3", LTS_S3_ENDPOINT=s3_endpoint, LTS_S3_REGION=S3_TEST_REGION, LTS_S3_BUCKET=bucket
    )
    (workdir / "prefect-vars.toml").write_text(tomli_w.dumps(data))
    refused = run_config(workdir, prefect_api_url)  # `archiver secrets init`'s random keys, no bucket
    assert refused.returncode != 0
    assert all(part in refused.stderr for part in ("ltss3user.txt", repr(bucket), "LTS_S3_BUCKET")), refused.stderr

    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": S3_TEST_REGION})
    write_s3_account(workdir / ".secrets", LTS_S3, S3_TEST_ACCOUNTS[ARCHIVER_S3])
    accepted = run_config(workdir, prefect_api_url)
    assert accepted.returncode == 0, accepted.stderr
    assert Secret.load(LTS_S3.user.prefect_block).get() == S3_TEST_ACCOUNTS[ARCHIVER_S3].access_key


def test_wrong_or_missing_prefect_credentials_are_one_clear_error_and_write_nothing(workdir, prefect_api_url):
    from prefect.variables import Variable

    wrong = workdir / "wrong-auth.txt"
    wrong.write_text("archiver:not-the-password\n")
    before = Variable.get("s3_landingzone_bucket")
    result = run_config(workdir, prefect_api_url, PREFECT_API_AUTH_STRING="", PREFECT_API_AUTH_STRING_FILE=str(wrong))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Prefect API refused the credentials (HTTP 401): set PREFECT_API_AUTH_STRING_FILE" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "created" not in result.stdout and "updated" not in result.stdout
    assert Variable.get("s3_landingzone_bucket") == before

    result = run_config(
        workdir, prefect_api_url, PREFECT_API_AUTH_STRING="", PREFECT_API_AUTH_STRING_FILE=str(workdir / "missing.txt")
    )
    assert result.returncode == 2
    assert f"secret file {workdir / 'missing.txt'} (PREFECT_API_AUTH_STRING_FILE" in result.stderr
