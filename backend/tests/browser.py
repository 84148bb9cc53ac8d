"""Headless Chromium (Debian's package) driven by Playwright, for tests that look at pages as a person would."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def browser_page() -> Iterator:
    """A fresh page of headless Chromium (1400 x 900)."""
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium")
    if not binary:
        pytest.skip("Debian's chromium is not installed (.ci/run and build_offline.sh install it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


@contextlib.contextmanager
def prefect_ui(ui_url: str, auth_string: str) -> Iterator:
    """A page logged into the Prefect UI at `ui_url` as an operator does: its login page asks for the
    server's auth string ('user:password')."""
    with browser_page() as page:
        page.goto(f"{ui_url}/dashboard")
        page.wait_for_url("**/login**")
        page.locator("input[type=password]").fill(auth_string)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/login" not in url)
        yield page


def page_text(page, url: str, wanted: list[str], timeout_s: float = 60) -> str:
    """The visible text of `url` once every `wanted` string shows; the last text seen otherwise."""
    page.goto(url)
    deadline = time.monotonic() + timeout_s
    while True:
        text = page.inner_text("body")
        if all(w in text for w in wanted) or time.monotonic() > deadline:
            return text
        page.wait_for_timeout(500)


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """A PNG of the page as it is (copied to ARCHIVER_SCREENSHOT_DIR when set, for a person to look at)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path)
    assert path.is_file() and path.stat().st_size > 10_000, f"screenshot {path} is (nearly) empty"
    if os.environ.get("ARCHIVER_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["ARCHIVER_SCREENSHOT_DIR"]) / path.name)
    return path
