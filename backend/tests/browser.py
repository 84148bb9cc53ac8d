"""Headless Chromium (Debian's package) for tests that look at pages as a person would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if not binary:
        pytest.skip("Debian's chromium is not installed (.ci/run and build_offline.sh install it)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1400,900",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=180)


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style|svg)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def rendered_text(url: str, tmp_path: Path, wanted: list[str], attempts: int = 3) -> str:
    """The page's visible text once every `wanted` string shows (virtual time does not wait for every
    fetch, so a slow render gets another try); the last text otherwise."""
    text = ""
    for attempt in range(attempts):
        text = visible_text(chromium("--dump-dom", url, profile=tmp_path / f"profile-{attempt}").stdout)
        if all(w in text for w in wanted):
            break
    return text


def screenshot(url: str, tmp_path: Path, name: str) -> Path:
    """A PNG of the page (copied to ARCHIVER_SCREENSHOT_DIR when set, for a person to look at)."""
    path = tmp_path / f"{name}.png"
    shot = chromium(f"--screenshot={path}", url, profile=tmp_path / f"profile-{name}")
    assert path.is_file() and path.stat().st_size > 10_000, shot.stderr[-2000:]
    if os.environ.get("ARCHIVER_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["ARCHIVER_SCREENSHOT_DIR"]) / path.name)
    return path
