"""Fixtures for the dashboard tests: a running stack and headless Debian Chromium.

- ``dash_stack`` (per module): real mosquitto and influxd (the session's), ingest and API, a
  crafted city and the simulator's ``small`` city publishing live (see ``dash_helpers``).
  Per module, so the fleet stops publishing once the dashboard tests are done.
- ``browser`` (per module): Chromium from the Debian package (``/usr/bin/chromium``), driven
  by Playwright with a fresh profile directory; never a downloaded browser. Per module
  because Playwright's sync API holds an event loop on the main thread while it runs, which
  would break ``asyncio.run`` in tests collected after these.
- ``page`` (per test): a new tab at 1280x800 whose console errors, page errors and CSP
  violations fail the test.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test modules import their helpers as ``dash_helpers``; this directory has no __init__.py.
sys.path.insert(0, str(Path(__file__).parent))

from dash_helpers import DashStack, start_dash_stack
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, sync_playwright

from smartcity._localstack import Influxd, Mosquitto

CHROMIUM = os.environ.get("SMARTCITY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Screenshots land here (gitignored), one per test that takes one.
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def dash_stack(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashStack]:
    stack = start_dash_stack(mosquitto, influxd, tmp_path_factory.mktemp("dash"))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        pytest.fail(f"{CHROMIUM} is missing: run `make system-packages` "
                    "(or: sudo apt-get install -y chromium)", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 800}, reduced_motion="reduce",
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    tab = browser.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    try:
        yield tab
    finally:
        tab.close()
    # Expected and handled by the page: a refused WebSocket while the API restarts, and the
    # 401/403 answers the tests provoke (wrong key, viewer acknowledging). Nothing else.
    expected: tuple[str, ...] = (
        "WebSocket connection",
        "the server responded with a status of 401",
        "the server responded with a status of 403",
    )
    if request.node.get_closest_marker("api_restart"):
        # While the API is down, any request the page makes (REST too) is refused.
        expected += ("net::ERR_CONNECTION_REFUSED",)
    unexpected = [p for p in problems if not any(e in p for e in expected)]
    assert not unexpected, "\n".join(unexpected)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
