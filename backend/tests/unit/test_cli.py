"""The `archiver` command explains itself and fails in one line that names the service and what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from archiver.cli import main

SUBCOMMANDS = [
    ["config"],
    ["secrets", "init"],
    ["api"],
    ["job"],
    ["limits", "reconcile"],
    ["lts", "prune-discarded"],
    ["serve"],
    ["dev"],
    ["scicat-dev"],
    ["audit"],
]


def archiver(*args: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    """The command as a user runs it: its own process, no Prefect profile or PREFECT_* of this session."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run(
        [sys.executable, "-m", "archiver.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**clean, "PREFECT_HOME": str(tmp_path / "prefect-home"), **env},
    )


def test_version_names_the_package_and_prefect(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"archiver {version('archiver')} (prefect {version('prefect')})"


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_says_what_it_does_and_its_defaults(argv, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n")[1].strip()
    assert description and not description.startswith(("options:", "positional")), text
    options = [line for line in text.splitlines() if line.strip().startswith("--") and "--help" not in line]
    for line in options:  # an option alone on its line has its help on the next one
        assert len(line.split()) > 2 or text.split(line, 1)[1].splitlines()[1].startswith(" " * 20), text


@pytest.mark.parametrize(
    "argv", [["config"], ["limits", "reconcile"], ["serve"], ["job", "archive", "x/y"], ["audit"]], ids=" ".join
)
def test_prefect_commands_refuse_to_run_without_prefect_api_url(argv, tmp_path):
    result = archiver(*argv, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: PREFECT_API_URL is not set") and result.stderr.count("\n") == 1
    assert not (tmp_path / "prefect-home" / "server").exists()  # no temporary server was started


def test_unreachable_prefect_is_one_line_naming_it_without_traceback(tmp_path):
    url = "http://127.0.0.1:9/api"  # discard port: nothing listens
    result = archiver(
        "limits", "reconcile", "--limits", str(_limits_file(tmp_path)), tmp_path=tmp_path, PREFECT_API_URL=url
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 2, result.stderr
    assert "Prefect API unreachable" in result.stderr and url in result.stderr


def _limits_file(tmp_path):
    from pathlib import Path

    source = Path(__file__).resolve().parents[3] / "concurrency-limits.toml"
    target = tmp_path / "concurrency-limits.toml"
    target.write_text(source.read_text())
    return target
