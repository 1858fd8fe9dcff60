"""Offline devices do not look live: whatever belongs to an offline gateway, or whose last
reading is older than its usual interval, is drawn stale (grey, hatched, age on hover and
in the details). Its own module (and stack): the crafted city's gateway dies here."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from dash_helpers import CITY_GW, FAULT_GW, HOT_STATION, DashStack, api_json, wait_until
from dash_page import sign_in
from playwright.sync_api import Page, expect

from telemetry import Death, encode_message

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_an_offline_gateway_and_a_silent_device_are_drawn_stale(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    sign_in(page, dash_stack)
    park = page.locator(f"#layer-parking g.feature[data-key='{CITY_GW}/park-1']")
    link = page.locator(f"#layer-links g.feature[data-key='{CITY_GW}/link-south']")
    air = page.locator(f"#layer-air g.feature[data-key='{CITY_GW}/aq-1']")
    bus = page.locator(f"#layer-vehicles g.feature[data-key='{CITY_GW}/bus-a']")
    hot = page.locator(f"#layer-air g.feature[data-key='{FAULT_GW}/{HOT_STATION}']")
    for item in (park, link, air, bus, hot):
        expect(item).to_have_attribute("data-stale", "false")
    assert not [g for g in api_json(dash_stack, "/v1/gateways")["items"] if not g["online"]]

    # The page has seen the crafted gateways' rhythm (a reading every 0.5 s) live.
    wait_until(lambda: page.evaluate(
        "k => (window.smartcityDashboard.model.layers.air.get(k) || {}).intervalS > 0",
        f"{FAULT_GW}/{HOT_STATION}"))
    # The crafted city stops publishing; its main gateway says goodbye (as an edge agent's
    # last will does), the other one just goes quiet.
    city = dash_stack.city
    city._stop.set()
    city._thread.join(5)
    death = Death(gw=CITY_GW, ts=time.time_ns(), reason="lost")
    city.client.publish(city.topics.status(CITY_GW), encode_message(death), qos=1,
                        retain=True).wait_for_publish(5)

    # Pushed live: everything of the offline gateway turns stale at once.
    for item in (park, link, air, bus):
        expect(item).to_have_attribute("data-stale", "true", timeout=10_000)
        expect(item).to_have_class(re.compile(r"\bstale\b"))
    title = air.locator("title")
    expect(title).to_contain_text(f"Not live: gateway {CITY_GW} offline")
    # The link is drawn grey (dashed), no longer in its congestion colour.
    stroke = link.locator("polyline.link-line").evaluate("n => getComputedStyle(n).stroke")
    assert stroke == "rgb(138, 147, 158)", stroke
    # Its air station no longer reads as "1 good" in the details: it says it is not live.
    # (A click event on the marker itself: the offline bus may have stopped on top of it.)
    air.dispatch_event("click")
    expect(page.locator("#details-body .stale-badge")).to_contain_text(
        f"not live: gateway {CITY_GW} offline")
    # The gateways table says since when, and no completeness while offline.
    row = page.locator(f"#gateway-rows tr[data-gateway='{CITY_GW}']")
    expect(row.locator(".offline-since time")).to_have_count(1, timeout=20_000)
    expect(row).to_contain_text("offline")
    expect(page.locator("#kpis .kpi[data-kpi=offline]")).to_have_attribute("data-count", "1")
    page.screenshot(path=str(artifacts / "dashboard-stale.png"))

    # The other gateway is online but its station has sent nothing for many of its
    # intervals (0.5 s): stale too, by its own rhythm rather than after stale_after_s.
    wait_until(lambda: hot.get_attribute("data-stale") == "true", timeout=30)
    expect(hot.locator("title")).to_contain_text("no recent reading")
