"""The operations room answers an operator's questions: live vehicle positions in the
details, a KPI strip whose counts match the API's and filter the map, a title count and a
beep for a new critical alert, alerts grouped and acknowledged in bulk, one snapshot load at
start-up, exact-id search, CSV exports and alert markers on the map."""

from __future__ import annotations

import csv
import io
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dash_helpers import (
    CITY_GW,
    FAULT_GW,
    HOT_STATION,
    DashStack,
    api_json,
    demo_url,
    wait_until,
)
from dash_page import sign_in, wait_live
from playwright.sync_api import Page, expect
from pydantic import ValidationError

from api import ApiSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SNAPSHOTS = ("devices", "gateways", "transport/vehicles", "transport/links",
             "transport/parking", "resources/air", "alerts")


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dlat = (a[0] - b[0]) * 111_320
    dlon = (a[1] - b[1]) * 111_320 * math.cos(math.radians(a[0]))
    return math.hypot(dlat, dlon)


def test_vehicle_details_show_its_live_position_not_its_birth(
    page: Page, dash_stack: DashStack
) -> None:
    # The crafted buses announce the south-west corner in their birth, then drive round.
    birth = api_json(dash_stack, f"/v1/devices/{CITY_GW}/bus-a")["location"]
    sign_in(page, dash_stack)
    page.click("#search")
    page.keyboard.type("bus-a")
    page.keyboard.press("Enter")
    expect(page.locator("#details-title")).to_have_text("Vehicle bus-a")
    shown = page.locator("#details-body [data-field=position]")
    expect(shown).to_contain_text("live GPS")

    def close_to_live() -> tuple[float, float, float] | None:
        text = shown.inner_text().split(" (")[0]
        lat_s, lon_s = (p.strip() for p in text.split(","))
        # Five decimals (about a metre), as the details promise.
        if len(lat_s.split(".")[1]) != 5 or len(lon_s.split(".")[1]) != 5:
            return None
        live = page.evaluate(
            "k => { const f = window.smartcityDashboard.model.layers.vehicles.get(k);"
            " return [f.lat, f.lon]; }", f"{CITY_GW}/bus-a")
        gap = _metres((float(lat_s), float(lon_s)), (live[0], live[1]))
        return (float(lat_s), float(lon_s), gap) if gap < 60 else None

    # The details refresh every 5 s while the bus moves ~10 m/s: within a refresh of live.
    lat, lon, _gap = wait_until(close_to_live, timeout=15)
    api_live = api_json(dash_stack, "/v1/transport/vehicles")["items"]
    (bus,) = [v for v in api_live if v["device"] == "bus-a" and v["gateway"] == CITY_GW]
    assert _metres((lat, lon), (bus["location"]["lat"], bus["location"]["lon"])) < 400
    # Not the birth position (the old details showed that, wherever the bus was).
    wait_until(lambda: _metres(
        tuple(float(p) for p in shown.inner_text().split(" (")[0].split(",")),  # type: ignore[arg-type]
        (birth["lat"], birth["lon"])) > 50, timeout=30)
    # Its area is where it is now (the API places it in the city's area map), not its birth's.
    area = page.locator("#details-body dt:text-is('Area') + dd")

    def same_area() -> bool:
        items = api_json(dash_stack, "/v1/transport/vehicles")["items"]
        (now,) = [v for v in items if v["device"] == "bus-a" and v["gateway"] == CITY_GW]
        return now["area"] in {"centre", "inner", "outer"} and area.inner_text() == now["area"]

    wait_until(same_area, timeout=15)


def _api_kpis(stack: DashStack) -> dict[str, int]:
    links = api_json(stack, "/v1/transport/links", limit=1000)["items"]
    levels = Counter(link["congestionLevel"] for link in links)
    parking = api_json(stack, "/v1/transport/parking", limit=1000)["items"]
    air = api_json(stack, "/v1/resources/air", limit=1000)["items"]
    gateways = api_json(stack, "/v1/gateways", limit=1000)["items"]
    bands = api_json(stack, "/v1/vocabulary")["aqi_bands"]
    adherence = api_json(stack, "/v1/transport/adherence", limit=1000)
    return {
        "severe": levels["severe"],
        "heavy": levels["heavy"],
        "parking-full": sum(1 for p in parking if (p["occupancy"] or 0) >= 0.95),
        "air-poor": sum(1 for a in air if a.get("aqi") and bands.index(a["aqi"]) >= 3),
        "offline": sum(1 for g in gateways if not g["online"]),
        "late": adherence["summary"]["late"],
        "bunched": adherence["summary"]["bunched"],
    }


def _page_kpis(page: Page) -> dict[str, int]:
    counts: dict[str, str] = page.eval_on_selector_all(
        "#kpis .kpi", "bs => Object.fromEntries(bs.map(b => [b.dataset.kpi, b.dataset.count]))")
    return {k: int(v) for k, v in counts.items()}


def test_kpi_strip_fills_fast_matches_the_api_and_filters_the_map(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    wait_until(lambda: api_json(dash_stack, "/v1/transport/links")["total"] > 5)
    page.goto(f"{demo_url(dash_stack)}#key={dash_stack.keys['viewer']}")
    strip = page.locator("#kpis")
    expect(strip).to_have_attribute("data-ready", "true", timeout=10_000)
    filled_ms = int(strip.get_attribute("data-filled-ms") or 0)
    print(f"\ntime to KPI strip filled: {filled_ms} ms")
    (artifacts / "kpi-time.txt").write_text(f"{filled_ms}\n")
    assert 0 < filled_ms < 2000, filled_ms
    wait_live(page)
    # Both sides move with live data: compare snapshots taken together until they agree.
    # A count computed differently from the API's never would.
    last: list[Any] = []

    def agree() -> bool:
        page.evaluate("() => { const d = window.smartcityDashboard;"
                      " d.resync('test'); d.refreshAdherence(); }")
        page.wait_for_timeout(600)
        ours, theirs = _page_kpis(page), _api_kpis(dash_stack)
        last[:] = [ours, theirs]
        return ours == theirs

    wait_until(agree, timeout=30, interval=0.2)
    assert last[0]["severe"] >= 1  # the crafted city's link-west
    assert last[0]["air-poor"] >= 1  # aq-3 (PM2.5 30: poor)
    # The small city's buses against its GTFS timetable (the API's schedule adherence).
    expect(page.locator("#kpis .kpi[data-kpi=late]")).to_be_visible()
    print(f"late {last[0]['late']}, bunched {last[0]['bunched']}")
    # Clicking a count filters the map to what it counts; again shows everything.
    page.click("#kpis .kpi[data-kpi=severe]")
    expect(page.locator("#map")).to_have_attribute("data-filter", "severe")
    expect(page.locator(f"#layer-links g.feature.match[data-key='{CITY_GW}/link-west']")
           ).to_have_count(1)
    expect(page.locator(f"#layer-links g.feature.match[data-key='{CITY_GW}/link-south']")
           ).to_have_count(0)
    expect(page.locator("#layer-parking g.feature.match")).to_have_count(0)
    page.screenshot(path=str(artifacts / "dashboard-kpi-filter.png"))
    page.click("#kpis .kpi[data-kpi=severe]")
    expect(page.locator("#map")).to_have_attribute("data-filter", "")


def test_start_up_loads_each_snapshot_once(page: Page, dash_stack: DashStack,
                                           artifacts: Path) -> None:
    sizes: dict[str, list[int]] = {}

    def on_response(response: Any) -> None:
        if "/v1/" not in response.url:
            return
        path = response.url.split("?")[0].split("/v1/", 1)[1]
        try:
            sizes.setdefault(path, []).append(len(response.body()))
        except Exception:  # noqa: BLE001 (a body gone with a closed tab counts as unknown)
            sizes.setdefault(path, []).append(0)

    page.on("response", on_response)
    page.goto(f"{demo_url(dash_stack)}#key={dash_stack.keys['viewer']}")
    wait_live(page)
    expect(page.locator("#kpis")).to_have_attribute("data-ready", "true")
    page.wait_for_timeout(3000)  # a late second load would show up here
    page.remove_listener("response", on_response)
    for name in SNAPSHOTS:
        assert len(sizes.get(name, [])) == 1, (name, sizes)
    total = sum(sum(v) for v in sizes.values())
    print(f"\nstart-up payload: {total} bytes in {sum(map(len, sizes.values()))} responses")
    (artifacts / "startup-payload.txt").write_text(f"{total}\n{sizes}\n")


def test_critical_alert_titles_beeps_groups_and_is_acknowledged_in_bulk(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    with dash_stack.client("operator") as operator:
        rule = operator.post("/v1/alert-rules", json={
            "name": "PM2.5 above 35 ug/m3 (ops test)", "kind": "threshold",
            "measurement": "AirQualityObserved", "field": "pm25", "op": ">",
            "threshold": 35, "duration_s": 1, "severity": "critical",
        })
        assert rule.status_code == 201, rule.text
        rule_id = rule.json()["id"]
        try:
            # As if the operator had allowed desktop notifications for the dashboard.
            page.context.grant_permissions(["notifications"], origin=dash_stack.url)
            sign_in(page, dash_stack, "operator")
            expect(page.locator("#notify-enable")).to_have_attribute("data-permission", "granted")
            assert not page.title().startswith("(")
            page.click("#sound-toggle")  # a user gesture lets the page play sound...
            page.click("#sound-toggle")  # ...and the sound stays on
            dash_stack.city.inject_pm25(80.0)
            expect(page).to_have_title("(1) City operations – smart-city telemetry",
                                       timeout=10_000)
            expect(page.locator("body")).to_have_attribute("data-beeps", "1")
            expect(page.locator("body")).to_have_attribute("data-notified", "1")
            group = page.locator("#alert-list li.alert-group", has_text="(ops test)")
            expect(group).to_have_count(1)
            # Units for people, in the rule and the message; no raw ISO time in the text.
            item = group.locator("li.alert", has_text=HOT_STATION)
            expect(item).to_contain_text("µg/m³")
            assert "ug/m3" not in item.inner_text()
            # The alert has a marker on the map, at the station.
            marker = page.locator(
                f"#layer-alerts g.alert-marker[data-key='{FAULT_GW}/{HOT_STATION}']")
            expect(marker).to_have_count(1)
            expect(marker).to_have_class("alert-marker sev-critical")
            # Critical alerts stay pinned on top, acknowledged or not.
            first = page.locator("#alert-list > li").first
            expect(first).to_contain_text("(ops test)")
            page.screenshot(path=str(artifacts / "dashboard-critical.png"))
            group.get_by_role("button", name="Acknowledge all 1").click()
            note = group.get_by_role("textbox")
            expect(note).to_be_focused()
            note.fill("bulk: crew sent")
            group.get_by_role("button", name="Acknowledge 1").click()
            expect(page.locator("#alert-note")).to_have_text("1 alert acknowledged.")
            expect(item).to_contain_text("bulk: crew sent")
            expect(page).to_have_title("City operations – smart-city telemetry")
            expect(page.locator("#alert-list > li").first).to_contain_text("(ops test)")
            alerts = api_json(dash_stack, "/v1/alerts", gateway=FAULT_GW)["items"]
            (alert,) = [a for a in alerts if a["rule_id"] == rule_id]
            assert alert["acknowledged"]
            assert alert["ack_note"] == "bulk: crew sent"
            assert alert["ack_by"] == "dash-operator"
            # A viewer is refused by the API (and offered no button by the page).
            with dash_stack.client("viewer") as viewer:
                refused = viewer.post("/v1/alerts/ack", json={"ids": [alert["id"]]})
                assert refused.status_code == 403
            # Filters: severity and state.
            page.select_option("#alert-severity", "warning")
            expect(page.locator("#alert-list li.alert", has_text="(ops test)")).to_have_count(0)
            expect(marker).to_have_count(0)  # the map's markers follow the filters
            page.select_option("#alert-severity", "critical")
            page.select_option("#alert-state", "new")
            expect(page.locator("#alert-list li.alert", has_text="(ops test)")).to_have_count(0)
            page.select_option("#alert-state", "acked")
            expect(page.locator("#alert-list li.alert", has_text="(ops test)")).to_have_count(1)
            page.select_option("#alert-state", "")
            page.select_option("#alert-severity", "")
        finally:
            dash_stack.city.inject_pm25(None)
            operator.delete(f"/v1/alert-rules/{rule_id}")


def test_history_has_a_range_filters_paging_and_exports_csv(
    page: Page, dash_stack: DashStack
) -> None:
    wait_until(lambda: api_json(dash_stack, "/v1/alerts/history")["total"] > 0, timeout=20)
    sign_in(page, dash_stack, "viewer")
    page.click("#alert-history summary")
    status = page.locator("#alert-history-status")
    expect(status).to_contain_text("transition")
    page.select_option("#history-transition", "raised")
    api_total = api_json(dash_stack, "/v1/alerts/history", transition="raised")["total"]
    expect(page.locator("#alert-history")).to_have_attribute("data-total", str(api_total),
                                                             timeout=5000)
    for kind in page.locator("#alert-history-list .transition").all_inner_texts():
        assert kind.lower() == "raised"
    with page.expect_download() as download:
        page.click("#history-csv")
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[0][:3] == ["at", "transition", "severity"]
    assert len(rows) - 1 >= 1
    assert all(r[1] == "raised" for r in rows[1:])
    with page.expect_download() as download:
        page.click("#gateways-csv")
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[0][0] == "gateway"
    assert {CITY_GW, FAULT_GW} <= {r[0] for r in rows[1:]}


def test_search_prefers_exact_ids_finds_every_device_and_says_no_match(
    page: Page, dash_stack: DashStack
) -> None:
    sign_in(page, dash_stack)
    search = page.locator("#search")
    # A gateway id that is also part of other ids opens the gateway.
    search.fill(FAULT_GW)
    search.press("Enter")
    expect(page.locator("#details-title")).to_have_text(f"Gateway {FAULT_GW}")
    # A device that is not drawn on the map (a water meter of the simulated city).
    meters = [d for d in api_json(dash_stack, "/v1/devices", limit=1000)["items"]
              if d["kind"].startswith("water")]
    assert meters, "the small city has water meters"
    search.fill(meters[0]["id"])
    search.press("Enter")
    expect(page.locator("#search-result")).to_contain_text("not drawn on the map")
    expect(page.locator("#details-title")).to_contain_text(meters[0]["id"])
    # Visible "no match", not only for screen readers.
    search.fill("no-such-thing-42")
    search.press("Enter")
    expect(page.locator("#search-result")).to_be_visible()
    expect(page.locator("#search-result")).to_have_text(
        "No device or gateway matches “no-such-thing-42”.")


def test_selecting_from_an_alert_zooms_the_map_to_it(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    wait_until(lambda: any(a.get("device") == "link-west"
                           for a in api_json(dash_stack, "/v1/alerts")["items"]))
    sign_in(page, dash_stack)
    before = page.get_attribute("#map-svg", "viewBox")
    page.locator("#alert-list li.alert", has_text="link-west").first.get_by_role(
        "button", name=f"{CITY_GW}/link-west").click()
    expect(page.locator("#details-title")).to_have_text("Traffic link link-west")
    wait_until(lambda: page.get_attribute("#map-svg", "viewBox") != before)
    after = [float(v) for v in (page.get_attribute("#map-svg", "viewBox") or "").split()]
    assert after[2] < [float(v) for v in (before or "").split()][2]  # zoomed in
    expect(page.locator(f"#layer-links g.feature.selected[data-key='{CITY_GW}/link-west']")
           ).to_have_count(1)
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "dashboard-selected-link.png"))


def test_touch_targets_are_at_least_24_px_on_a_tablet(page: Page, dash_stack: DashStack) -> None:
    page.set_viewport_size({"width": 820, "height": 1180})
    sign_in(page, dash_stack)
    time.sleep(0.5)
    sizes: list[list[Any]] = page.eval_on_selector_all(
        "#layer-air g.feature, #layer-parking g.feature, #layer-vehicles g.feature",
        "ns => ns.map(n => { const r = n.getBoundingClientRect();"
        " return [n.dataset.key, r.width, r.height]; })")
    assert sizes
    small = [s for s in sizes if s[1] < 24 or s[2] < 24]
    assert not small, small[:5]


def test_gateways_are_above_the_fold_and_markers_do_not_overlap(
    page: Page, dash_stack: DashStack, artifacts: Path
) -> None:
    sign_in(page, dash_stack)
    top = page.locator("#gateways-title").bounding_box()
    assert top is not None
    assert top["y"] + top["height"] < 800, top
    page.screenshot(path=str(artifacts / "dashboard-fold-1280x800.png"))
    # Car parks and air stations that stand close together (the small city puts several
    # in one block) are spread apart: no two markers cover each other, whole city.
    boxes: list[list[Any]] = page.eval_on_selector_all(
        "#layer-parking .park-box, #layer-air .air-dot",
        "ns => ns.map(n => { const r = n.getBoundingClientRect();"
        " return [n.closest('[data-key]').dataset.key, r.x, r.y, r.width, r.height]; })")
    assert len(boxes) >= 10
    overlaps = []
    for i, (ka, xa, ya, wa, ha) in enumerate(boxes):
        for kb, xb, yb, wb, hb in boxes[i + 1:]:
            dx = min(xa + wa, xb + wb) - max(xa, xb)
            dy = min(ya + ha, yb + hb) - max(ya, yb)
            if dx > 0 and dy > 0 and dx * dy > 0.25 * min(wa * ha, wb * hb):
                overlaps.append((ka, kb))
    assert not overlaps, overlaps[:5]
    # Each marker is the one its click selects (no neighbour on top of it). Buses drive
    # over everything: hide them for this.
    page.get_by_label("Vehicles").uncheck()
    for key, x, y, w, h in boxes[:12]:
        hit = page.evaluate("([x, y]) => { const n = document.elementFromPoint(x, y);"
                            " const g = n && n.closest('[data-key]'); return g && g.dataset.key; }",
                            [x + w / 2, y + h / 2])
        assert hit == key, (key, hit)


def test_details_have_sparklines_and_the_chart_exports_as_csv(
    page: Page, dash_stack: DashStack
) -> None:
    sign_in(page, dash_stack)
    page.click(f"#layer-air g.feature[data-key='{CITY_GW}/aq-3']")
    expect(page.locator("#chart")).to_have_attribute("data-state", "drawn", timeout=15_000)
    # Each numeric field has a sparkline of its last hour.
    expect(page.locator("#details-body svg.spark").first).to_be_visible(timeout=10_000)
    expect(page.locator("#details-body svg.spark[aria-label^='pm25, last hour']")).to_have_count(1)
    with page.expect_download() as download:
        page.click("#chart-csv")
    assert download.value.suggested_filename == "aq-3-pm25-1h.csv"
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows[0][:5] == ["time", "gateway", "device", "measurement", "field"]
    assert len(rows) >= 2
    assert rows[1][2] == "aq-3"
    assert float(rows[-1][5]) == pytest.approx(30.0)


def test_times_are_shown_in_the_city_time_zone(page: Page, dash_stack: DashStack) -> None:
    wait_until(lambda: api_json(dash_stack, "/v1/alerts")["total"] > 0)
    sign_in(page, dash_stack)
    expect(page.locator("body")).to_have_attribute("data-timezone", "Europe/Oslo")
    started = page.locator("#alert-list li.alert time").first
    iso = started.get_attribute("datetime")
    # The browser's language, the city's zone (CET/CEST or GMT+1/+2, as the locale says).
    zone = page.evaluate(
        "iso => new Intl.DateTimeFormat(undefined, {timeZone: 'Europe/Oslo',"
        " timeZoneName: 'short'}).formatToParts(new Date(iso))"
        ".find(p => p.type === 'timeZoneName').value", iso)
    expect(started).to_contain_text(zone)
    assert "Z" not in (started.inner_text() or "")


def test_an_unknown_city_time_zone_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        ApiSettings(city_timezone="Mars/Olympus_Mons")


def test_replaying_the_last_hours_of_alerts_and_buses_on_the_map(
    page: Page, dash_stack: DashStack
) -> None:
    wait_until(lambda: api_json(dash_stack, "/v1/alerts")["total"] > 0)
    page.wait_for_timeout(1500)  # the API stores transitions about once a second
    sign_in(page, dash_stack)
    status = page.locator("#replay-status")
    counts: list[int] = []

    def agrees() -> bool:
        page.uncheck("#replay-toggle")
        page.check("#replay-toggle")
        expect(page.locator("body")).to_have_attribute("data-replay", "on")
        counts[:] = [int(status.get_attribute("data-active") or -1),
                     api_json(dash_stack, "/v1/alerts")["total"]]
        return counts[0] == counts[1]

    # At the end of the slider (now): the alerts active now, from the stored history.
    wait_until(agrees, timeout=20, interval=0.5)
    expect(page.locator("#layer-alerts g.alert-marker").first).to_be_visible()
    # ... and the buses where the recorded readings put them (GET /v1/transport/replay).
    buses = page.locator("#layer-vehicles g.feature:not(.replay-absent)")
    wait_until(lambda: int(status.get_attribute("data-vehicles") or 0) > 0, timeout=10)
    expect(buses).to_have_count(int(status.get_attribute("data-vehicles") or -1))
    recorded = api_json(dash_stack, "/v1/transport/replay", step="60s")
    key = buses.first.get_attribute("data-key") or ""
    gateway, device = key.split("/", 1)
    positions = next(v["positions"] for v in recorded["vehicles"]
                     if (v["gateway"], v["device"]) == (gateway, device))
    shown = float(buses.first.get_attribute("data-lat") or "nan")
    # The current minute's last position moves on while the test reads: within ~100 m of it.
    recent = [p for p in positions[-3:] if p is not None]
    assert any(abs(p[0] - shown) < 1e-3 for p in recent), (shown, recent)
    # Six hours ago (before this test city existed): no alerts, no buses.
    page.locator("#replay-slider").fill("0")
    expect(status).to_have_attribute("data-active", "0")
    expect(status).to_have_attribute("data-vehicles", "0")
    expect(page.locator("#layer-alerts g.alert-marker")).to_have_count(0)
    expect(buses).to_have_count(0)
    # Off: the live markers come back.
    page.uncheck("#replay-toggle")
    expect(page.locator("#layer-alerts g.alert-marker").first).to_be_visible()
    expect(page.locator("#layer-vehicles g.feature").first).to_be_visible()
