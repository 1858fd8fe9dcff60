"""Bulk acknowledgement (POST /v1/alerts/ack): operators acknowledge many alerts with one
note; viewers are refused; resolved and already acknowledged alerts are reported, not
failed; alert messages carry units for people and no raw timestamp."""

from __future__ import annotations

import uuid

from api_helpers import ApiStack, Publisher, device, wait_until


def _raise_two(api_stack: ApiStack, publisher: Publisher) -> tuple[str, int, list[str]]:
    gw = f"gw-bulk-{uuid.uuid4().hex[:6]}"
    publisher.birth(gw, [device("aq-a", "air-quality", area="centre"),
                         device("aq-b", "air-quality", area="centre")])
    rule = api_stack.client("operator").post("/v1/alert-rules", json={
        "name": f"PM2.5 above 35 ug/m3 ({gw})", "kind": "threshold",
        "measurement": "AirQualityObserved", "field": "pm25", "op": ">", "threshold": 35,
        "duration_s": 0, "severity": "critical",
    })
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    for dev in ("aq-a", "aq-b"):
        publisher.reading(gw, dev, "AirQualityObserved", {"pm25": 80.0})

    def ours() -> list[str]:
        items = api_stack.get("/v1/alerts", params={"gateway": gw}).json()["items"]
        ids = [a["id"] for a in items if a["rule_id"] == rule_id]
        return ids if len(ids) == 2 else []

    return gw, rule_id, wait_until(ours)


def test_an_operator_acknowledges_many_alerts_with_one_note(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    gw, rule_id, ids = _raise_two(api_stack, publisher)
    try:
        alerts = api_stack.get("/v1/alerts", params={"gateway": gw}).json()["items"]
        for a in alerts:
            # Units for people in the message; the time is the alert's `started`, not text.
            assert a["message"] == "PM2.5 80 µg/m³ > 35 µg/m³", a["message"]
        unknown = "0123456789abcdef"
        out = api_stack.client("operator").post(
            "/v1/alerts/ack", json={"ids": [*ids, unknown, ids[0]], "note": "crew sent"})
        assert out.status_code == 200, out.text
        body = out.json()
        assert sorted(a["id"] for a in body["acknowledged"]) == sorted(ids)
        assert body["missing"] == [unknown]
        assert body["already"] == []
        for a in body["acknowledged"]:
            assert (a["acknowledged"], a["ack_by"], a["ack_note"]) == (
                True, "test-operator", "crew sent")
        listed = api_stack.get("/v1/alerts", params={"gateway": gw}).json()["items"]
        assert all(a["acknowledged"] and a["ack_note"] == "crew sent" for a in listed)
        # Again: nothing new, both reported as already acknowledged.
        again = api_stack.client("operator").post("/v1/alerts/ack", json={"ids": ids}).json()
        assert again["acknowledged"] == []
        assert sorted(again["already"]) == sorted(ids)
        # Each acknowledgement is in the stored history, with who and the note.
        def acked() -> list[dict[str, object]]:
            rows = api_stack.get("/v1/alerts/history", params={
                "gateway": gw, "transition": "acknowledged"}).json()["items"]
            return rows if len(rows) == 2 else []

        for row in wait_until(acked):
            assert (row["by"], row["note"]) == ("test-operator", "crew sent")
    finally:
        api_stack.client("operator").delete(f"/v1/alert-rules/{rule_id}")


def test_a_viewer_is_refused_and_bad_bodies_get_a_clear_error(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    gw, rule_id, ids = _raise_two(api_stack, publisher)
    try:
        refused = api_stack.client("viewer").post("/v1/alerts/ack", json={"ids": ids})
        assert refused.status_code == 403, refused.text
        assert api_stack.client(None).post("/v1/alerts/ack", json={"ids": ids}).status_code == 401
        still = api_stack.get("/v1/alerts", params={"gateway": gw}).json()["items"]
        assert not any(a["acknowledged"] for a in still)
        operator = api_stack.client("operator")
        for body in ({"ids": []}, {"ids": ["not-an-id"]}, {"ids": ids, "extra": 1},
                     {"ids": ids, "note": "x" * 1025}, {"ids": ["0" * 16] * 1001}):
            bad = operator.post("/v1/alerts/ack", json=body)
            shown = body if len(str(body)) < 200 else "1001 ids"
            assert bad.status_code in (400, 422), (shown, bad.text)
    finally:
        api_stack.client("operator").delete(f"/v1/alert-rules/{rule_id}")
