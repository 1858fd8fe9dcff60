"""The audit panel: an admin sees who did what, refused attempts included, filtered and paged
by the API (``GET /v1/audit``); other roles do not get the panel."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from dash_helpers import DashStack, api_json, wait_until
from dash_page import sign_in
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_admins_see_the_audit_trail_with_refusals_and_export_it(
    page: Page, dash_stack: DashStack
) -> None:
    name = f"audit-{uuid.uuid4().hex[:6]}"
    with dash_stack.client("admin") as admin:
        assert admin.post("/v1/keys", json={"name": name, "role": "viewer"}).status_code == 201
    with dash_stack.client("operator") as operator:  # not allowed: refused, and recorded
        assert operator.post("/v1/keys", json={"name": name + "-x", "role": "admin"}
                             ).status_code == 403
    entries = wait_until(lambda: api_json(dash_stack, "/v1/audit", role="admin",
                                          action="key.")["items"])
    assert {e["result"].split(":")[0] for e in entries} >= {"ok", "refused"}

    sign_in(page, dash_stack, role="admin")
    panel = page.locator("#audit")
    expect(panel).to_be_visible()
    expect(panel).to_have_attribute("data-ready", "true")
    panel.locator("#audit-title").scroll_into_view_if_needed()
    page.select_option("#audit-action", "key.")
    rows = panel.locator("#audit-rows tr[data-action]")
    expect(rows.first).to_be_visible()
    expect(panel).to_have_attribute("data-total", str(len(entries)))
    actions = set(rows.evaluate_all("rs => rs.map(r => r.dataset.action)"))
    assert actions <= {"key.create", "key.revoke"}
    refused = panel.locator("#audit-rows tr[data-result^='refused']")
    expect(refused.first).to_contain_text("dash-operator (operator)")
    page.select_option("#audit-result", "refused")
    expect(panel.locator("#audit-rows tr[data-action]")).to_have_count(
        sum(e["result"].startswith("refused") for e in entries))

    with page.expect_download() as download:
        page.click("#audit-csv")
    text = download.value.path().read_text(encoding="utf-8-sig")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:5] == ["at", "key", "key name", "role", "action"]
    assert all(row[7].startswith("refused") for row in table[1:])
    assert len(table) > 1


def test_the_audit_panel_is_only_for_admins(page: Page, dash_stack: DashStack) -> None:
    sign_in(page, dash_stack, role="operator")
    expect(page.locator("#audit")).to_be_hidden()
    with dash_stack.client("operator") as operator:
        assert operator.get("/v1/audit").status_code == 403
