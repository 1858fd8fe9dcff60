"""Sign-in and key handling; an injected fault raises an alert that appears live and that an
operator acknowledges from the panel."""

from __future__ import annotations

from pathlib import Path

import pytest
from dash_helpers import FAULT_GW, HOT_STATION, DashStack, api_json, demo_url, wait_until
from dash_page import sign_in, storage, wait_live
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_key_lives_in_session_storage_only(page: Page, dash_stack: DashStack) -> None:
    page.goto(demo_url(dash_stack))
    page.fill("#key", "sck_not-a-key-at-all")
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("That key was not accepted.")
    key = dash_stack.keys["viewer"]
    page.fill("#key", key)
    page.click("#signin button[type=submit]")
    wait_live(page)
    expect(page.locator("#who")).to_have_text("dash-viewer (viewer)")
    state = storage(page)
    assert state["session"] == {"smartcity.apiKey": key}
    assert state["local"] == {}
    assert state["cookie"] == ""
    assert state["cookies"] == []
    assert key not in state["url"]
    assert page.input_value("#key") == ""
    page.reload()  # the tab keeps its session
    wait_live(page)
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    # The key is gone; only the "Signed out." notice is left for the reloaded page to show.
    assert "smartcity.apiKey" not in storage(page)["session"]
    # The demo hands the key over in the fragment: taken, then gone from the address bar.
    page.goto(f"{demo_url(dash_stack)}#key={key}")
    wait_live(page)
    state = storage(page)
    assert key not in state["url"]
    assert state["url"].endswith("/dashboard/")
    assert state["session"] == {"smartcity.apiKey": key}


def test_injected_fault_raises_an_alert_that_an_operator_acknowledges(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    with dash_stack.client("operator") as operator:
        rule = operator.post("/v1/alert-rules", json={
            "name": "PM2.5 above 35 (test, 1 s)", "kind": "threshold",
            "measurement": "AirQualityObserved", "field": "pm25", "op": ">",
            "threshold": 35, "duration_s": 1, "severity": "critical",
        })
        assert rule.status_code == 201, rule.text
        rule_id = rule.json()["id"]
        try:
            sign_in(page, dash_stack, "operator")
            item = page.locator(f"#alert-list li.alert:has-text('{HOT_STATION}')")
            expect(item).to_have_count(0)
            dash_stack.city.inject_pm25(80.0)
            # Pushed live (the panel's REST poll is every 30 s).
            expect(item).to_have_count(1, timeout=10_000)
            expect(item).to_contain_text("PM2.5 above 35 (test, 1 s)")
            expect(item.locator(".sev")).to_have_text("critical")
            page.screenshot(path=str(artifacts / "dashboard-alert.png"))
            item.get_by_role("button", name="Acknowledge").click()
            note = item.get_by_role("textbox")
            expect(note).to_be_focused()
            note.fill("crew sent")
            item.get_by_role("button", name="Confirm").click()
            expect(item).to_contain_text("Acknowledged by dash-operator", timeout=5_000)
            expect(item).to_contain_text("crew sent")
            alerts = api_json(dash_stack, "/v1/alerts", gateway=FAULT_GW)["items"]
            (alert,) = [a for a in alerts if a["rule_id"] == rule_id]
            assert alert["acknowledged"]
            assert alert["ack_note"] == "crew sent"
            # The history (stored by the API) lists the raise and the acknowledgement.
            page.click("#alert-history summary")
            history = page.locator(f"#alert-history-list li[data-alert-id='{alert['id']}']")
            expect(history.filter(has_text="acknowledged")).to_contain_text("crew sent",
                                                                          timeout=20_000)
            expect(history.filter(has_text="raised")).to_have_count(1)
            # Clicking the subject shows the station.
            item.get_by_role("button", name=f"{FAULT_GW}/{HOT_STATION}").click()
            expect(page.locator("#details-title")).to_have_text(
                f"Air-quality station {HOT_STATION}"
            )
            # The fault clears: the alert resolves and leaves the panel, live; the open
            # history follows.
            dash_stack.city.inject_pm25(None)
            expect(item).to_have_count(0, timeout=10_000)
            expect(history.filter(has_text="resolved")).to_have_count(1, timeout=20_000)
        finally:
            dash_stack.city.inject_pm25(None)
            operator.delete(f"/v1/alert-rules/{rule_id}")


def test_a_viewer_cannot_acknowledge(page: Page, dash_stack: DashStack) -> None:
    # The default congestion rule keeps an alert on the crafted city's severe link.
    wait_until(lambda: api_json(dash_stack, "/v1/alerts")["total"] > 0)
    sign_in(page, dash_stack, "viewer")
    # The page asked /v1/me: a viewer is offered no button that would only be refused.
    expect(page.locator("#who")).to_have_text("dash-viewer (viewer)")
    expect(page.locator("#alert-list li.alert").first).to_be_visible()
    expect(page.locator("#alert-note")).to_contain_text("needs an operator key")
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
