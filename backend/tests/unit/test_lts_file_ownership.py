"""LTS_FILE_UID / LTS_FILE_GID / LTS_FILE_MODE as applied to a file before it is published."""

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from archiver.storage.lts import FileOwnership


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owner_group_and_mode_are_given_to_the_file(tmp_path):
    path = tmp_path / "datablock.tar"
    with open(path, "wb") as f:
        FileOwnership(uid=1234, gid=2345, mode=0o440).apply(f.fileno(), path)
    status = path.stat()
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (1234, 2345, 0o440)


def test_unset_parts_stay_as_created(tmp_path):
    path = tmp_path / "datablock.tar"
    path.touch()
    before = path.stat()
    with open(path, "rb") as f:
        FileOwnership(mode=0o400).apply(f.fileno(), path)
    after = path.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (before.st_uid, before.st_gid, 0o400)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the check as another user, which needs root")
def test_a_user_who_may_not_change_owners_gets_an_error_naming_the_settings():
    """Run as `nobody`: chown to root is refused, and the error says which settings and what to do."""
    with tempfile.TemporaryDirectory() as folder:  # pytest's tmp_path is closed to other users
        os.chmod(folder, 0o777)
        result = _as_nobody(Path(folder) / "block.tar")
    assert result.returncode != 0
    assert "LtsOwnershipError" in result.stderr
    assert "owner 0:0 (LTS_FILE_UID:LTS_FILE_GID)" in result.stderr
    assert "uid 65534" in result.stderr and "unset LTS_FILE_UID and LTS_FILE_GID" in result.stderr


def _as_nobody(path: Path) -> subprocess.CompletedProcess:
    script = (
        "import os, sys; from pathlib import Path; from archiver.storage.lts import FileOwnership\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"path = Path({str(path)!r})\n"
        "with open(path, 'wb') as f:\n"
        "    FileOwnership(uid=0, gid=0).apply(f.fileno(), path)\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
