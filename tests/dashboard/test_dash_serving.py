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
                 "util.js", "uPlot.esm.js", "dashboard.css", "uPlot.min.css"):
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
    for path in ASSETS.glob("*.js"):
        text = path.read_text()
        assert not re.search(r"localStorage\s*[.\[]|document\.cookie", text), path.name
        assert "sck_" not in text, path.name
    licence = (ASSETS / "uPlot.esm.js").read_text()[:2000]
    assert "The MIT License" in licence
    assert "uPlot 1.6.32" in licence
