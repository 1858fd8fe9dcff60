"""The fleet panel: version, last update, clock, disk and links per gateway, filtered by the
API's flags (``GET /v1/gateways?status=``). The crafted city's two gateways report health
with a clock 7 s off (dash-city) and an older version on a nearly full disk (dash-fault)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dash_helpers import CITY_GW, FAULT_GW, DashStack, api_json, wait_until
from dash_page import sign_in
from playwright.sync_api import Page, expect

from telemetry import Health, SpoolHealth, UpdateReport, encode_message

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _health(gw: str, **extra: object) -> bytes:
    spool = SpoolHealth(batches=0, readings=0, bytes=0, budget_bytes=1 << 20, oldest_age_s=None,
                        dropped_batches=0, dropped_readings=0)
    return encode_message(Health(gw=gw, ts=time.time_ns(), uptime_s=60.0, next_seq=1,
                                 spool=spool, **extra))  # type: ignore[arg-type]


def test_fleet_panel_shows_versions_clocks_disks_and_filters(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    city = dash_stack.city
    now = time.time_ns()
    city.client.publish(city.topics.health(CITY_GW), _health(
        CITY_GW, version="9.2.0", disk_free_bytes=8 << 30, links={"loops": "up", "uplink": "up"},
        clock_offset_s=-7.25, clock_delay_s=0.004, clock_checked_ts=now,
        update=UpdateReport(version="9.2.0", status="ok", ts=time.time() - 600),
    ), qos=1).wait_for_publish(5)
    city.client.publish(city.topics.health(FAULT_GW), _health(
        FAULT_GW, version="9.1.0", disk_free_bytes=1 << 20, links={"uplink": "up"},
        update=UpdateReport(version="9.2.0", status="rolled_back", ts=time.time() - 60,
                            reason="no birth within 60 s"),
    ), qos=1).wait_for_publish(5)
    wait_until(lambda: {g["id"] for g in api_json(dash_stack, "/v1/gateways",
                                                  status="clock_off")["items"]} == {CITY_GW})

    sign_in(page, dash_stack)
    panel = page.locator("#fleet")
    expect(panel).to_have_attribute("data-ready", "true")
    panel.locator("#fleet-title").scroll_into_view_if_needed()
    city_row = panel.locator(f"tr[data-gateway='{CITY_GW}']")
    fault_row = panel.locator(f"tr[data-gateway='{FAULT_GW}']")
    # The panel polls every 30 s: a filter change loads at once.
    page.select_option("#fleet-filter", "")
    expect(city_row.locator("td.version")).to_have_text("9.2.0")
    expect(city_row.locator("td.clock")).to_contain_text("−7.25 s")
    expect(city_row.locator("td.clock")).to_contain_text("off")
    expect(city_row.locator("td.disk")).to_have_text("8 GiB")
    expect(city_row.locator("td.links")).to_contain_text("loops up")
    expect(city_row.locator("td.update")).to_contain_text("ok 9.2.0")
    expect(fault_row.locator("td.version")).to_contain_text("9.1.0 outdated")
    expect(fault_row.locator("td.disk")).to_contain_text("1 MiB low")
    expect(fault_row.locator("td.update")).to_contain_text("rolled_back 9.2.0")
    expect(fault_row.locator("td.update")).to_have_attribute("title", "no birth within 60 s")
    expect(fault_row).to_have_attribute("data-flags", "outdated disk_low")

    page.select_option("#fleet-filter", "clock_off")
    expect(panel.locator("tbody tr")).to_have_count(1)
    expect(city_row).to_be_visible()
    expect(panel.locator("#fleet-status")).to_have_text("1 gateway clock off")

    page.select_option("#fleet-filter", "disk_low")
    expect(fault_row).to_be_visible()
    expect(city_row).to_have_count(0)

    page.select_option("#fleet-filter", "outdated")
    expect(fault_row).to_be_visible()
    expect(city_row).to_have_count(0)
    panel.screenshot(path=str(artifacts / "dash-fleet.png"))
