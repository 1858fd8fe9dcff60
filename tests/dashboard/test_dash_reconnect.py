"""The live stream reconnects by itself when the API goes away and comes back."""

from __future__ import annotations

import time

import pytest
from dash_helpers import CITY_GW, DashStack, restart_api
from dash_page import sign_in, vehicle_positions
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.api_restart]


def test_stream_reconnects_after_an_api_restart(page: Page, dash_stack: DashStack) -> None:
    sign_in(page, dash_stack)
    restart_api(dash_stack)
    conn = page.locator("#conn")
    expect(conn).not_to_have_attribute("data-state", "live", timeout=10_000)
    expect(conn).to_have_attribute("data-state", "live", timeout=30_000)
    bus = f"{CITY_GW}/bus-a"
    before = vehicle_positions(page)[bus]
    # The next position comes through the restarted API's stream: wait for it, bounded.
    deadline = time.monotonic() + 20
    while vehicle_positions(page)[bus] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vehicle_positions(page)[bus] != before
    expect(page.locator("#signin")).to_be_hidden()
