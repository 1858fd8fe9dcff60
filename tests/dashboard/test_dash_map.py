"""The map: it loads, draws every layer with the right colours, moves the vehicles live, is
usable from the keyboard, and charts a selected device's history; screenshots are saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from dash_helpers import AIR, BUSES, CITY_GW, LINKS, PARKING, DashStack, wait_until
from dash_page import sign_in, vehicle_positions
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_map_draws_roads_links_car_parks_and_air_stations(
    page: Page, dash_stack: DashStack
) -> None:
    sign_in(page, dash_stack)
    feature = "#layer-{layer} g.feature[data-key='{gw}/{id}']"
    # Links with a geometry are polylines coloured by congestion (speed against 50 km/h).
    expected = {"link-south": "free", "link-east": "moderate", "link-north": "heavy",
                "link-west": "severe", "link-cross": "free"}
    for link, level in expected.items():
        node = page.locator(feature.format(layer="links", gw=CITY_GW, id=link))
        expect(node).to_have_attribute("data-level", level)
        expect(node.locator("polyline.link-line")).to_have_count(1)
    assert page.locator("#layer-roads polyline.road").count() >= len(LINKS)
    # Links of the simulated city announce a point only: drawn as markers.
    wait_until(lambda: page.locator("#layer-links g.feature:not([data-key^='dash-'])").count()
               > 0)
    for park, (_pos, total) in PARKING.items():
        node = page.locator(feature.format(layer="parking", gw=CITY_GW, id=park))
        free = int(node.get_attribute("data-free") or "-1")
        assert 0 <= free <= total
        expect(node.locator("text.park-free")).to_have_text(str(free))
    bands = {"aq-1": "good", "aq-2": "moderate", "aq-3": "poor"}
    for station in AIR:
        node = page.locator(feature.format(layer="air", gw=CITY_GW, id=station))
        expect(node).to_have_attribute("data-band", bands[station])
    # The simulator's city is there too, with its buses.
    assert int(page.locator("#map").get_attribute("data-vehicles") or 0) >= len(BUSES) + 1
    expect(page.locator("#gateway-summary")).to_contain_text("online")
    # The gateway panel shows each gateway's spool backlog from the /v1/gateways summary.
    row = page.locator(f"#gateway-rows tr[data-gateway='{CITY_GW}']")
    for _ in range(30):
        if row.count():
            break
        page.get_by_role("button", name="Next").click()
    spool_cell = row.locator("td.num").first
    expect(spool_cell).to_have_text("3")
    assert "42 readings" in (spool_cell.get_attribute("title") or "")


def test_vehicle_positions_change_between_two_reads(page: Page, dash_stack: DashStack) -> None:
    sign_in(page, dash_stack)
    first = vehicle_positions(page)
    assert {f"{CITY_GW}/{b}" for b in BUSES} <= set(first)

    def moved() -> set[str]:
        second = vehicle_positions(page)
        return {k for k in first if k in second and first[k] != second[k]}

    # The buses move on the simulator's clock, through broker, API and stream: on a loaded
    # machine that takes a while, so wait (bounded) for both instead of reading once.
    wait_until(lambda: {f"{CITY_GW}/bus-a", f"{CITY_GW}/bus-b"} <= moved(), timeout=20)
    # The drawn marker follows the data (CSS transform, animated when motion is allowed).
    transform = page.locator(f"#layer-vehicles g[data-key='{CITY_GW}/bus-a']").evaluate(
        "n => n.style.transform"
    )
    assert transform.startswith("translate(")


def test_keyboard_selects_an_item_and_its_history_chart_renders(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    sign_in(page, dash_stack)
    page.keyboard.press("m")
    expect(page.locator("#map")).to_be_focused()
    page.keyboard.press("n")
    expect(page.locator("#map-status")).to_contain_text("Enter shows details")
    expect(page.locator("#layer-cursor circle.cursor-ring")).to_have_count(1)
    page.keyboard.press("Enter")
    expect(page.locator("#details-title")).to_contain_text("Vehicle")
    # Find an air station by name, as an operator would.
    page.keyboard.press("Escape")
    page.keyboard.press("/")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("aq-3")
    page.keyboard.press("Enter")
    expect(page.locator("#details-title")).to_have_text("Air-quality station aq-3")
    expect(page.locator("#details-body")).to_contain_text("Air quality: poor")
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-state", "drawn", timeout=15_000)
    assert int(chart.get_attribute("data-points") or 0) >= 1
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.locator("#chart-summary")).to_contain_text("pm25")
    # Another range re-queries the history through the API.
    page.click("#chart-controls button[data-range='15m']")
    expect(page.locator("#chart-summary")).to_contain_text("15 min as 10s means")
    page.screenshot(path=str(artifacts / "dashboard-1280x800.png"))
    page.set_viewport_size({"width": 820, "height": 1180})
    # The search zoomed the map to aq-3; back to the whole city to pick a car park.
    page.click("#zoom-reset")
    page.click(f"#layer-parking g.feature[data-key='{CITY_GW}/park-1']")
    expect(page.locator("#details-title")).to_have_text("Car park park-1")
    expect(chart).to_have_attribute("data-state", "drawn", timeout=15_000)
    page.screenshot(path=str(artifacts / "dashboard-tablet-820x1180.png"), full_page=True)
