"""The base map: with a tile source configured, tiles from it load under the drawing and stay
aligned with it while the operator zooms and pans; without one, no other host is contacted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dash_helpers import CITY_GW, LINKS, DashStack
from dash_page import wait_live
from playwright.sync_api import Page, expect
from tile_server import TileServer

from api import ApiServer, ApiSettings, Database
from api.dashboard import content_security_policy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ATTRIBUTION = "Test tiles © the test suite"


@pytest.fixture(scope="module")
def tiles() -> Iterator[TileServer]:
    server = TileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def tiled_api(dash_stack: DashStack, tiles: TileServer) -> Iterator[ApiServer]:
    """A second API replica on the same broker and databases, with a tile source."""
    base = dash_stack.server.settings
    settings = ApiSettings(**{
        **base.model_dump(), "port": 0,
        "mqtt": {**base.mqtt.model_dump(), "client_id": f"api-tiles-{uuid.uuid4().hex[:8]}"},
        "map_tiles_url": tiles.template, "map_tiles_attribution": ATTRIBUTION,
        "map_tiles_max_zoom": 18,
    })
    server = ApiServer(settings, db=Database(base.database_url))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _open(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/dashboard/#key={key}")
    wait_live(page)


def _offsets(page: Page, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Screen distance (x, y) between where the SVG and the base map put each point."""
    pairs: list[list[float]] = page.evaluate(
        """points => {
            const d = window.smartcityDashboard, m = d.map, lm = d.basemap.map;
            const box = lm.getContainer().getBoundingClientRect();
            return points.map(([lat, lon]) => {
                const [x, y] = m.project(lat, lon);
                const p = new DOMPoint(x, y).matrixTransform(m.svg.getScreenCTM());
                const q = lm.latLngToContainerPoint([lat, lon]);
                return [p.x - (q.x + box.left), p.y - (q.y + box.top)];
            });
        }""",
        [list(p) for p in points],
    )
    return [(dx, dy) for dx, dy in pairs]


def _corners() -> list[tuple[float, float]]:
    return [pt for geometry, _speed in LINKS.values() for pt in geometry]


def test_tiles_load_under_the_drawing_and_stay_aligned(
    page: Page, dash_stack: DashStack, tiled_api: ApiServer, tiles: TileServer, artifacts: Path
) -> None:
    page_response = httpx.get(f"{tiled_api.url}/dashboard/")
    assert page_response.headers["content-security-policy"] == content_security_policy(
        f"http://127.0.0.1:{tiles.port}"
    )
    _open(page, tiled_api.url, dash_stack.keys["viewer"])
    base = page.locator("#map")
    expect(base).to_have_attribute("data-tiles", "shown", timeout=15_000)
    expect(page.locator("#map .basemap img.leaflet-tile-loaded").first).to_be_visible()
    expect(page.locator("#map .map-attribution")).to_have_text(ATTRIBUTION)
    # The drawing is on top and still takes the clicks.
    page.click(f"#layer-parking g.feature[data-key='{CITY_GW}/park-1']")
    expect(page.locator("#details-title")).to_have_text("Car park park-1")
    whole_zoom = float(base.get_attribute("data-tile-zoom") or "nan")
    for dx, dy in _offsets(page, _corners()):
        assert abs(dx) < 2, (dx, dy)
        assert abs(dy) < 2, (dx, dy)
    first_level = round(whole_zoom)
    assert any(z == first_level for z, _x, _y in tiles.tiles()), tiles.tiles()
    # Tile servers see the dashboard's origin as referrer, never the page's path.
    referrers = {ref for path, ref in tiles.requests if path.startswith("/tiles/")}
    assert referrers == {f"{tiled_api.url}/"}, referrers
    page.screenshot(path=str(artifacts / "dashboard-basemap.png"))

    # Zoom in three steps from the keyboard and pan: the tiles follow the drawing.
    page.keyboard.press("m")
    for key in ("+", "+", "+", "ArrowRight", "ArrowDown"):
        page.keyboard.press(key)
    expect(base).not_to_have_attribute("data-tile-zoom", f"{whole_zoom:.3f}")
    page.wait_for_function(
        "z => Number(document.querySelector('#map').dataset.tileZoom) > z + 1.5", arg=whole_zoom
    )
    zoomed = float(base.get_attribute("data-tile-zoom") or "nan")
    assert zoomed - whole_zoom == pytest.approx(3 * 0.5849625, abs=0.01)  # log2(1.5) a step
    page.wait_for_function(
        "z => [...document.querySelectorAll('#map .basemap img.leaflet-tile-loaded')]"
        ".some(img => img.src.includes(`/tiles/${z}/`))", arg=round(zoomed),
    )
    for dx, dy in _offsets(page, _corners()):
        assert abs(dx) < 2, (dx, dy)
        assert abs(dy) < 2, (dx, dy)
    # The base map can be switched off and on; the drawing stays.
    toggle = page.get_by_label("Base map")
    expect(toggle).to_be_checked()
    toggle.uncheck()
    expect(page.locator("#map .basemap")).to_be_hidden()
    expect(page.locator("#map .map-attribution")).to_be_hidden()
    expect(page.locator("#map-svg")).to_be_visible()
    toggle.check()
    expect(page.locator("#map .basemap")).to_be_visible()
    page.focus("#map")
    page.keyboard.press("0")  # whole city again
    page.wait_for_function(
        "z => Math.abs(Number(document.querySelector('#map').dataset.tileZoom) - z) < 0.01",
        arg=whole_zoom,
    )


def test_without_a_tile_source_the_page_contacts_no_other_host(
    page: Page, dash_stack: DashStack
) -> None:
    with dash_stack.client() as client:
        assert client.get("/v1/dashboard/config").json()["tiles"] is None
        assert httpx.get(f"{dash_stack.url}/v1/dashboard/config").status_code == 401
    _open(page, dash_stack.url, dash_stack.keys["viewer"])
    expect(page.locator("#map .basemap")).to_have_count(0)
    expect(page.get_by_label("Base map")).to_be_hidden()
    urls: list[Any] = page.evaluate(
        "() => performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls
    assert all(u.startswith(dash_stack.url) for u in urls), urls
    assert not any("leaflet" in u for u in urls), urls
