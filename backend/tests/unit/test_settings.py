import tomllib
from pathlib import Path

import pytest
import tomli_w

from archiver.config.errors import ConfigError
from archiver.config.limits import load_limits_file
from archiver.config.secrets import init_secrets
from archiver.config.settings import (
    environment_overrides,
    flat_values,
    from_flat,
    from_prefect_variables,
    load_vars_file,
    variable_name,
)
from archiver.tools.seeding import read_inputs

REPO = Path(__file__).resolve().parents[3]
SEED_KEYS = {
    "archiver": ["ARCHIVER_SCRATCH_FOLDER", "ARCHIVER_TARGET_SIZE_MB"],
    "lts": ["LTS_STORAGE_ROOT", "LTS_FREE_SPACE_PERCENTAGE"],
    "s3": ["S3_REGION", "S3_RETRIEVAL_BUCKET", "S3_LANDINGZONE_BUCKET", "S3_STAGING_BUCKET", "S3_ENDPOINT"],
    "scicat": ["SCICAT_API_PREFIX"],
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prefect-vars.toml"
    path.write_text(text)
    return path


def repo_vars_with(tmp_path: Path, section: str, line: str) -> Path:
    text = (REPO / "prefect-vars.toml").read_text().replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    return write(tmp_path, text)


def test_repo_vars_file_keeps_the_seed_keys_and_loads():
    raw = tomllib.loads((REPO / "prefect-vars.toml").read_text())
    for section, keys in SEED_KEYS.items():
        assert set(keys) <= set(raw[section]), section
    settings = load_vars_file(REPO / "prefect-vars.toml")
    values = flat_values(settings)
    assert values["ARCHIVER_TARGET_SIZE_MB"] == raw["archiver"]["ARCHIVER_TARGET_SIZE_MB"]
    assert values["S3_ENDPOINT"] == raw["s3"]["S3_ENDPOINT"]
    assert settings.archiver.target_size_bytes == raw["archiver"]["ARCHIVER_TARGET_SIZE_MB"] * 1024 * 1024


def test_unknown_key_names_file_section_and_key(tmp_path):
    path = repo_vars_with(tmp_path, "lts", 'LTS_TYPO = "x"')
    with pytest.raises(ConfigError) as e:
        load_vars_file(path)
    message = str(e.value)
    assert str(path) in message and "[lts] LTS_TYPO" in message and "unknown key" in message
    assert "LTS_STORAGE_ROOT" in message  # says what is expected instead


def test_unknown_section_is_rejected(tmp_path):
    path = write(tmp_path, (REPO / "prefect-vars.toml").read_text() + "\n[bogus]\nX = 1\n")
    with pytest.raises(ConfigError, match=r"\[bogus\]: unknown key; expected one of \[archiver\]"):
        load_vars_file(path)


def test_wrong_type_names_key_expectation_and_value(tmp_path):
    text = (
        (REPO / "prefect-vars.toml")
        .read_text()
        .replace("ARCHIVER_TARGET_SIZE_MB = 20000", 'ARCHIVER_TARGET_SIZE_MB = "big"')
    )
    with pytest.raises(ConfigError) as e:
        load_vars_file(write(tmp_path, text))
    message = str(e.value)
    assert "[archiver] ARCHIVER_TARGET_SIZE_MB" in message and "integer" in message and "'big'" in message


def test_missing_required_value(tmp_path):
    text = (REPO / "prefect-vars.toml").read_text().replace('S3_REGION = "eu-west-1"\n', "")
    with pytest.raises(ConfigError, match=r"\[s3\] S3_REGION: required value is missing"):
        load_vars_file(write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("S3_URL_EXPIRATION_S = 604800", "S3_URL_EXPIRATION_S = 604801", "S3_URL_EXPIRATION_S"),
        ('S3_ENDPOINT = "http://minio:9000"', 'S3_ENDPOINT = "minio:9000"', "S3_ENDPOINT"),
        (
            'ARCHIVER_CHECKSUM_ALGORITHM = "sha256"',
            'ARCHIVER_CHECKSUM_ALGORITHM = "crc32"',
            "ARCHIVER_CHECKSUM_ALGORITHM",
        ),
        ("LTS_FREE_SPACE_PERCENTAGE = 20", "LTS_FREE_SPACE_PERCENTAGE = 120", "LTS_FREE_SPACE_PERCENTAGE"),
        ("ARCHIVER_HEARTBEAT_S = 30", "ARCHIVER_HEARTBEAT_S = 20", "ARCHIVER_HEARTBEAT_S"),
        ("ARCHIVER_CRASH_RETRIES = 2", "ARCHIVER_CRASH_RETRIES = -1", "ARCHIVER_CRASH_RETRIES"),
        ("ARCHIVER_ZOMBIE_WINDOW_S = 90", "ARCHIVER_ZOMBIE_WINDOW_S = 30", "ARCHIVER_ZOMBIE_WINDOW_S"),
        ('LTS_AUDIT_CRON = "0 2 * * *"', 'LTS_AUDIT_CRON = "daily"', "LTS_AUDIT_CRON.*'daily' is not a cron schedule"),
        ('LTS_AUDIT_CRON = "0 2 * * *"', 'LTS_AUDIT_CRON = "0 25 * * *"', "LTS_AUDIT_CRON"),
        ("LTS_AUDIT_BUDGET_MB = 500000", "LTS_AUDIT_BUDGET_MB = 0", "LTS_AUDIT_BUDGET_MB"),
        ("LTS_AUDIT_PERIOD_DAYS = 90", "LTS_AUDIT_PERIOD_DAYS = 0", "LTS_AUDIT_PERIOD_DAYS"),
        ("LTS_AUDIT_PARTIAL_AGE_HOURS = 48", "LTS_AUDIT_PARTIAL_AGE_HOURS = -1", "LTS_AUDIT_PARTIAL_AGE_HOURS"),
    ],
)
def test_out_of_range_values_are_rejected(tmp_path, old, new, key):
    text = (REPO / "prefect-vars.toml").read_text()
    assert old in text
    with pytest.raises(ConfigError, match=key):
        load_vars_file(write(tmp_path, text.replace(old, new)))


def test_unreadable_toml_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not readable as TOML"):
        load_vars_file(write(tmp_path, "[archiver\nX = "))
    with pytest.raises(ConfigError, match="file not found"):
        load_vars_file(tmp_path / "nope.toml")


def test_environment_overrides_prefect_values():
    values = flat_values(load_vars_file(REPO / "prefect-vars.toml"))
    env = {"LTS_STORAGE_ROOT": "/data/lts", "ARCHIVER_TARGET_SIZE_MB": "5", "UNRELATED": "x"}
    overrides = environment_overrides(env)
    assert overrides == {"LTS_STORAGE_ROOT": "/data/lts", "ARCHIVER_TARGET_SIZE_MB": "5"}
    settings = from_flat({**values, **overrides}, source="test")
    assert settings.lts.storage_root == Path("/data/lts")
    assert settings.archiver.target_size_mb == 5


def test_empty_environment_values_do_not_override():
    # compose passes a variable left empty in .env as "" (e.g. SCICAT_ENDPOINT in production)
    assert environment_overrides({"SCICAT_ENDPOINT": "", "LTS_STORAGE_ROOT": "/x"}) == {"LTS_STORAGE_ROOT": "/x"}


def test_seeding_inputs_take_the_stacks_overrides_from_the_environment(tmp_path):
    init_secrets(tmp_path)
    files = (REPO / "prefect-vars.toml", REPO / "concurrency-limits.toml", tmp_path)
    environ = {"SCICAT_ENDPOINT": "http://scicat:3000", "S3_EXTERNAL_ENDPOINT": ""}
    overridden = read_inputs(*files, environ=environ).settings
    plain = read_inputs(*files).settings
    assert overridden.scicat.endpoint == "http://scicat:3000"
    assert overridden.s3.external_endpoint == plain.s3.external_endpoint
    assert overridden.model_copy(update={"scicat": plain.scicat}) == plain
    with pytest.raises(ConfigError, match=r"environment \(SCICAT_ENDPOINT\).*SCICAT_ENDPOINT"):
        read_inputs(*files, environ={"SCICAT_ENDPOINT": "not a url"})


def test_environment_override_with_bad_value_names_the_source():
    values = flat_values(load_vars_file(REPO / "prefect-vars.toml"))
    with pytest.raises(ConfigError, match=r"environment: \[archiver\] ARCHIVER_TARGET_SIZE_MB"):
        from_flat({**values, "ARCHIVER_TARGET_SIZE_MB": "-1"}, source="environment")


def test_variable_names_are_lowercase_keys():
    assert variable_name("LTS_STORAGE_ROOT") == "lts_storage_root"


def test_limits_file_maps_each_limit_to_a_tag():
    limits = load_limits_file(REPO / "concurrency-limits.toml").by_name()
    assert set(limits) == {"LTS_FREE_LIMIT", "MOVE_TO_LTS_LIMIT", "VERIFY_LTS_LIMIT", "LTS_TO_RETRIEVAL_LIMIT"}
    assert len({limit.tag for limit in limits.values()}) == 4


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"MOVE_TO_LTS_LIMIT": {"tag": "move-datablocks-to-lts", "limit": -1}}, r"\[MOVE_TO_LTS_LIMIT\] limit"),
        ({"SOME_LIMIT": {"tag": "x", "limit": 1}}, r"\[SOME_LIMIT\]: unknown key"),
        ({"MOVE_TO_LTS_LIMIT": {"tag": "Bad Tag", "limit": 1}}, r"\[MOVE_TO_LTS_LIMIT\] tag"),
        ({"MOVE_TO_LTS_LIMIT": {"tag": "x"}}, r"\[MOVE_TO_LTS_LIMIT\] limit: required"),
    ],
)
def test_bad_limits_are_rejected(tmp_path, change, expected):
    data = tomllib.loads((REPO / "concurrency-limits.toml").read_text()) | change
    path = tmp_path / "limits.toml"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match=expected):
        load_limits_file(path)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"SCICAT_API_PREFIX": '"/api/v4/"'}, "SCICAT_API_PREFIX '/api/v4/' must end in /api/v3/"),
        ({"SCICAT_JOBS_API_PREFIX": '"/api/v4/"'}, "SCICAT_JOB_STATUS_SCHEMA 'v3' does not fit SCICAT_JOBS_API_PREFIX"),
        ({"SCICAT_JOB_STATUS_SCHEMA": '"v4"'}, "take only v3 status updates"),
        ({"SCICAT_JOBS_API_PREFIX": '"/jobs/"'}, "must end in /api/v3/ or /api/v4/"),
    ],
)
def test_impossible_scicat_prefix_and_schema_combinations_are_refused(tmp_path, changes, says):
    text = (REPO / "prefect-vars.toml").read_text()
    for key, value in changes.items():
        text = "\n".join(f"{key} = {value}" if line.startswith(f"{key} =") else line for line in text.splitlines())
    with pytest.raises(ConfigError) as e:
        load_vars_file(write(tmp_path, text))
    assert says in str(e.value)


def test_scicat_v4_jobs_with_v3_datasets_is_accepted(tmp_path):
    text = (
        (REPO / "prefect-vars.toml")
        .read_text()
        .replace('SCICAT_JOBS_API_PREFIX = "/api/v3/"', 'SCICAT_JOBS_API_PREFIX = "/scicat/api/v4"')
    )
    text = text.replace('SCICAT_JOB_STATUS_SCHEMA = "v3"', 'SCICAT_JOB_STATUS_SCHEMA = "v4"')
    assert load_vars_file(write(tmp_path, text)).scicat.jobs_api_prefix == "/scicat/api/v4"


def _as_written_before_the_s3_names() -> str:
    """The repository's prefect-vars.toml with its S3 section spelt as it was: [minio], MINIO_* keys."""
    return (REPO / "prefect-vars.toml").read_text().replace("[s3]\n", "[minio]\n").replace("S3_", "MINIO_")


def test_a_vars_file_with_the_minio_names_loads_as_with_the_s3_names(tmp_path):
    assert load_vars_file(write(tmp_path, _as_written_before_the_s3_names())) == load_vars_file(
        REPO / "prefect-vars.toml"
    )


def test_minio_names_are_read_from_prefect_variables_and_the_environment_the_s3_names_winning():
    current = flat_values(load_vars_file(REPO / "prefect-vars.toml"))
    stored = {variable_name(key.replace("S3_", "MINIO_")): value for key, value in current.items()}
    stored["s3_region"] = "eu-central-2"  # written by a later `archiver config`, beside the old variable
    settings = from_prefect_variables(stored, environ={"MINIO_RETRIEVAL_WAIT_S": "60"})
    assert settings.s3.region == "eu-central-2"
    assert settings.s3.retrieval_wait_s == 60
    assert settings.s3.landingzone_bucket == current["S3_LANDINGZONE_BUCKET"]
    assert environment_overrides({"MINIO_ENDPOINT": "http://old:9000", "S3_ENDPOINT": "http://new:9000"}) == {
        "S3_ENDPOINT": "http://new:9000"
    }


def test_lts_file_owner_and_mode_are_optional_checked_and_kept_through_prefect_variables(tmp_path):
    unset = load_vars_file(REPO / "prefect-vars.toml").lts
    assert (unset.file_uid, unset.file_gid, unset.file_mode_bits) == (None, None, None)
    with pytest.raises(ConfigError, match="LTS_FILE_MODE.*'0999' is not a file mode"):
        load_vars_file(repo_vars_with(tmp_path, "lts", 'LTS_FILE_MODE = "0999"'))
    with pytest.raises(ConfigError, match="LTS_FILE_UID"):
        load_vars_file(repo_vars_with(tmp_path, "lts", "LTS_FILE_UID = -1"))
    text = (REPO / "prefect-vars.toml").read_text()
    path = write(
        tmp_path, text.replace("[lts]\n", '[lts]\nLTS_FILE_UID = 1000\nLTS_FILE_GID = 2000\nLTS_FILE_MODE = "0440"\n')
    )
    stored = from_flat(flat_values(load_vars_file(path)), source="Prefect variables").lts
    assert (stored.file_uid, stored.file_gid, stored.file_mode_bits) == (1000, 2000, 0o440)
