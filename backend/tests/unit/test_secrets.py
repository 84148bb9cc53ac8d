import pytest

from archiver.config.errors import ConfigError
from archiver.config.secrets import SECRETS, init_secrets, read_secret, secret_path, secret_spec


def test_init_creates_every_secret_file_private_and_random(tmp_path):
    created = init_secrets(tmp_path)
    assert {p.name for p in created} == {spec.filename for spec in SECRETS}
    for path in created:
        assert path.stat().st_mode & 0o077 == 0
        assert len(path.read_text().strip()) >= 12
    other = init_secrets(tmp_path / "other")
    assert [p.read_text() for p in created] != [p.read_text() for p in other]


def test_init_never_overwrites(tmp_path):
    (tmp_path / "miniopass.txt").write_text("keep-me\n")
    created = init_secrets(tmp_path)
    assert tmp_path / "miniopass.txt" not in created
    assert (tmp_path / "miniopass.txt").read_text() == "keep-me\n"
    assert init_secrets(tmp_path) == []


def test_file_env_variable_wins_over_folder(tmp_path):
    spec = secret_spec("MINIO_USER_FILE")
    own = tmp_path / "elsewhere"
    own.write_text("  user-from-compose\n")
    assert secret_path(spec, tmp_path, {"MINIO_USER_FILE": str(own)}) == own
    assert read_secret(spec, tmp_path, {"MINIO_USER_FILE": str(own)}) == "user-from-compose"


def test_missing_or_empty_secret_file_names_variable_and_remedy(tmp_path):
    spec = secret_spec("SCICAT_PASSWORD_FILE")
    with pytest.raises(ConfigError, match=r"scicatpass.txt \(SCICAT_PASSWORD_FILE.*archiver secrets init"):
        read_secret(spec, tmp_path, {})
    (tmp_path / "scicatpass.txt").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(spec, tmp_path, {})
