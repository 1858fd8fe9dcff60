"""Accessibility checked by a tool: axe-core (the engine behind Lighthouse's accessibility
audit) runs its WCAG 2.1 A and AA rules, colour contrast included, on the sign-in page and on
the signed-in dashboard with every panel filled, at 1280x800 and on a portrait tablet."""

from __future__ import annotations

import json
from typing import Any

import pytest
from axe_playwright_python.base import AXE_SCRIPT
from dash_helpers import CITY_GW, DashStack, api_json, demo_url, wait_until
from dash_page import sign_in
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: WCAG 2.0 and 2.1, levels A and AA: contrast (1.4.3, 1.4.11 for focus), names, roles,
#: labels, landmarks' basics, ...
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe(page: Page) -> list[dict[str, Any]]:
    """Violations axe-core finds on the page as it is now (CSP does not apply to this
    evaluation: it comes from the test driver, not from the page)."""
    page.evaluate(AXE_SCRIPT)
    result: dict[str, Any] = page.evaluate(
        "options => axe.run(document, options)",
        {"runOnly": {"type": "tag", "values": TAGS}, "resultTypes": ["violations"]},
    )
    violations: list[dict[str, Any]] = result["violations"]
    return violations


def _report(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        for node in v["nodes"][:5]:
            why = node.get("failureSummary", "")
            lines.append(f"{v['id']} ({v['impact']}): {node['target']} {why}")
    return "\n".join(lines) or json.dumps(violations)[:2000]


def test_sign_in_page_passes_wcag_aa(page: Page, dash_stack: DashStack) -> None:
    page.goto(demo_url(dash_stack))
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#key", "sck_not-a-key-at-all")
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("That key was not accepted.")
    violations = axe(page)
    assert not violations, _report(violations)


@pytest.mark.parametrize("viewport", [(1280, 800), (820, 1180)], ids=["desktop", "tablet"])
def test_dashboard_passes_wcag_aa_with_every_panel_filled(
    page: Page, dash_stack: DashStack, viewport: tuple[int, int]
) -> None:
    # The default congestion rule keeps an alert on the crafted city's severe link.
    wait_until(lambda: api_json(dash_stack, "/v1/alerts")["total"] > 0)
    page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
    sign_in(page, dash_stack, "operator")
    expect(page.locator("#alert-list li.alert").first).to_be_visible()
    expect(page.locator("#gateway-rows tr[data-gateway]").first).to_be_visible()
    page.click(f"#layer-air g.feature[data-key='{CITY_GW}/aq-3']")
    expect(page.locator("#chart")).to_have_attribute("data-state", "drawn", timeout=15_000)
    page.locator("#alert-list li.alert").first.get_by_role("button", name="Acknowledge").click()
    expect(page.locator("#alert-list form.ack-form")).to_have_count(1)
    page.click("#help summary")  # the keyboard help, open
    violations = axe(page)
    assert not violations, _report(violations)
