"""Browser fixtures: Debian's headless Chromium driven by Playwright, one browser per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import GatewayProcess, gateway_env

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _unavailable(reason: str) -> None:
    """Skip on a developer machine without a browser; in CI a missing browser is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this thread
# while it is open, so pytest-asyncio tests collected after the browser tests would fail with
# "Runner.run() cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    if CHROMIUM is None:
        _unavailable("chromium is not installed: apt-get install chromium")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    instance = browser.new_context(viewport={"width": 1180, "height": 820})
    instance.set_default_timeout(15_000)
    yield instance
    instance.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One embedded gateway per module for the tests that do not restart it.

    A job fails at its first error; rooms keep 10 events (tests use rooms of their own).
    """
    process = GatewayProcess(
        gateway_env(GATEWAY_MAX_ATTEMPTS="1", GATEWAY_RETENTION="room=10/3600 job=1000/3600"),
        tmp_path_factory.mktemp("browser-gateway") / "gateway.log",
    )
    process.start()
    yield process
    process.stop(5)
