"""The dashboard's files are served by the API app with strict headers, without a key."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from api import ApiSettings, create_app
from api.dashboard import ASSETS, CSP


class Client:
    """Requests straight into the ASGI app; no lifespan, as static files need no services."""

    def __init__(self) -> None:
        self.app = create_app(ApiSettings(demo=True, database_url="sqlite://"))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as c:
                return await c.get(path, **kwargs)

        # A thread of its own: Playwright's sync API keeps an event loop on the main thread.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: asyncio.run(run())).result()


@pytest.fixture
def client() -> Client:
    return Client()


def test_page_and_modules_are_served_with_security_headers(client: Client) -> None:
    page = client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP
    assert "unsafe" not in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<script type="module" src="app.js">' in page.text
    for name in ("app.js", "map.js", "model.js", "live.js", "panels.js", "chart.js", "api.js",
                 "util.js", "vendor/uPlot.esm.js", "dashboard.css", "vendor/uPlot.min.css",
                 "vendor/leaflet.esm.js", "vendor/leaflet.css"):
        response = client.get(f"/dashboard/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-security-policy"] == CSP
    assert client.get("/dashboard/app.js").headers["content-type"].startswith(
        "text/javascript"
    )


def test_root_redirects_to_the_dashboard(client: Client) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/dashboard/"
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("path", ["/dashboard/__init__.py", "/dashboard/_mount.py",
                                  "/dashboard/__pycache__", "/dashboard/missing.js",
                                  "/dashboard/../_app.py"])
def test_nothing_but_page_assets_is_served(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_no_inline_script_or_secret_in_the_assets() -> None:
    html = (ASSETS / "index.html").read_text()
    assert "<script>" not in html
    assert " on" + "click=" not in html
    for path in ASSETS.rglob("*.js"):
        text = path.read_text()
        assert not re.search(r"localStorage\s*[.\[]|document\.cookie", text), path.name
        assert "sck_" not in text, path.name
    licence = (ASSETS / "vendor" / "uPlot.esm.js").read_text()[:2000]
    assert "The MIT License" in licence
    assert "uPlot 1.6.32" in licence
    licence = (ASSETS / "vendor" / "leaflet.esm.js").read_text()[:3000]
    assert "BSD 2-Clause License" in licence
    assert "Leaflet 1.9.4" in licence


def test_tile_origin_is_the_only_other_host_the_policy_allows() -> None:
    settings = ApiSettings(demo=True, database_url="sqlite://",
                           map_tiles_url="https://{s}.tiles.example.org/{z}/{x}/{y}{r}.png",
                           map_tiles_attribution="© Example")
    assert settings.map_tiles_origin == "https://*.tiles.example.org"
    client = Client()
    client.app = create_app(settings)
    csp = client.get("/dashboard/").headers["content-security-policy"]
    assert "img-src 'self' data: https://*.tiles.example.org;" in csp
    assert "script-src 'self';" in csp
    assert "connect-src 'self';" in csp
    assert client.get("/dashboard/app.js").headers["content-security-policy"] == csp


@pytest.mark.parametrize(("url", "reason"), [
    ("https://tiles.example.org/{z}/{x}.png", "needs {z}, {x} and {y}"),
    ("http://tiles.example.org/{z}/{x}/{y}.png", "plain http"),
    ("ftp://tiles.example.org/{z}/{x}/{y}.png", "http(s)://"),
    ("https://a.{s}.example.org/{z}/{x}/{y}.png", "first label"),
    ("https://user:pw@tiles.example.org/{z}/{x}/{y}.png", "credentials"),
    ("https://tiles.example.org/{z}/{x}/{y}.png?k='x'", "character"),
    ("https://tiles.example.org/{z}/{x}/{y}/{q}.png", "unknown placeholder"),
])
def test_bad_tile_sources_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        ApiSettings(demo=True, database_url="sqlite://", map_tiles_url=url,
                    map_tiles_attribution="x")
    with pytest.raises(ValueError, match="needs map_tiles_attribution"):
        ApiSettings(demo=True, database_url="sqlite://",
                    map_tiles_url="https://tiles.example.org/{z}/{x}/{y}.png")


def _luminance(hex_colour: str) -> float:
    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG 2.1 contrast ratio of two ``#rrggbb`` colours."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_map_symbols_have_non_text_contrast_against_the_map() -> None:
    """WCAG 1.4.11: graphics that carry meaning need 3:1 against what is next to them. axe
    checks the page's text; the SVG symbols' colours are checked here, from the sources."""
    css = (ASSETS / "dashboard.css").read_text()
    background = re.search(r"--map-bg:\s*(#[0-9a-f]{6})", css)
    assert background is not None
    map_js = (ASSETS / "map.js").read_text()
    block = re.search(r"CONGESTION_COLOURS = \{([^}]*)\}", map_js)
    assert block is not None
    congestion = dict(re.findall(r"(free|moderate|heavy|severe): \"(#[0-9a-f]{6})\"", block[1]))
    assert set(congestion) == {"free", "moderate", "heavy", "severe"}
    for level, colour in congestion.items():
        assert contrast(colour, background[1]) >= 3, (level, colour)
    # Pale EAQI fills are outlined in dark ink (.air-dot stroke), which carries the contrast.
    outline = re.search(r"\.air-dot \{ stroke: (#[0-9a-f]{6})", css)
    assert outline is not None
    assert contrast(outline[1], background[1]) >= 3
