"""Driving the dashboard page: sign in, read the map, wait for the live stream."""

from __future__ import annotations

from typing import Any

from dash_helpers import DashStack, demo_url
from playwright.sync_api import Page, expect

LIVE_TIMEOUT_MS = 15_000


def sign_in(page: Page, stack: DashStack, role: str = "viewer") -> None:
    page.goto(demo_url(stack))
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#key", stack.keys[role])
    page.click("#signin button[type=submit]")
    wait_live(page)


def wait_live(page: Page) -> None:
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#map")).to_have_attribute("data-ready", "true", timeout=LIVE_TIMEOUT_MS)


def vehicle_positions(page: Page) -> dict[str, tuple[float, float]]:
    rows: list[list[Any]] = page.eval_on_selector_all(
        "#layer-vehicles g.feature",
        "nodes => nodes.map(n => [n.dataset.key, Number(n.dataset.lat), Number(n.dataset.lon)])",
    )
    return {key: (lat, lon) for key, lat, lon in rows}


def storage(page: Page) -> dict[str, Any]:
    """Everything the page could have persisted: session and local storage, cookies, URL."""
    out: dict[str, Any] = page.evaluate(
        """() => ({session: {...sessionStorage}, local: {...localStorage},
                   cookie: document.cookie, url: location.href})"""
    )
    out["cookies"] = page.context.cookies()
    return out
