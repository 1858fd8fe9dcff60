"""The audit trail (GET /v1/audit, admin): every administrative operation leaves exactly one
entry with who, what, which gateway and the result, refusals (403, 404, 400 of a known key)
included; requests without a valid key leave none. Commands: tests/api/test_api_commands.py;
enrolments: tests/api/test_api_enrolment.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from api_helpers import ApiStack, Publisher, device, wait_until

from api import Database
from api.storage import AuditLog
from telemetry import ConfigReported, encode_message


def entries(stack: ApiStack, **params: Any) -> list[dict[str, Any]]:
    resp = stack.get("/v1/audit", "admin", params={"limit": 1000, **params})
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def total(stack: ApiStack) -> int:
    resp = stack.get("/v1/audit", "admin", params={"limit": 1})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["total"])


def one_entry(stack: ApiStack, call: Callable[[], httpx.Response], status: int) -> dict[str, Any]:
    """Run ``call``; check its status and that it left exactly one entry; return it."""
    before = total(stack)
    resp = call()
    assert resp.status_code == status, resp.text
    after = entries(stack, limit=5)
    assert total(stack) == before + 1, after
    return after[0]


def test_each_kind_of_operation_leaves_exactly_one_entry(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    s = api_stack
    admin, operator, engineer, viewer = (s.client(r) for r in
                                         ("admin", "operator", "engineer", "viewer"))
    # -- keys ---------------------------------------------------------------------------------
    e = one_entry(s, lambda: admin.post("/v1/keys", json={"name": "ops-a", "role": "viewer"}),
                  201)
    key_id = e["target"]
    assert (e["action"], e["result"], e["actor"]["name"], e["actor"]["role"]) == (
        "key.create", "ok", "test-admin", "admin")
    assert e["detail"]["role"] == "viewer"
    assert "sck_" not in str(e)  # the key itself is never in the trail
    e = one_entry(s, lambda: operator.post("/v1/keys", json={"name": "x", "role": "admin"}), 403)
    assert (e["action"], e["actor"]["name"]) == ("key.create", "test-operator")
    assert e["result"].startswith("refused: 403 needs role admin")
    e = one_entry(s, lambda: admin.post("/v1/keys", json={"name": "x", "role": "root"}), 400)
    assert e["action"] == "key.create"
    assert e["result"].startswith("refused: 400")
    e = one_entry(s, lambda: admin.delete(f"/v1/keys/{key_id}"), 200)
    assert (e["action"], e["target"], e["result"]) == ("key.revoke", key_id, "ok")
    e = one_entry(s, lambda: admin.delete(f"/v1/keys/{uuid.uuid4().hex}"), 404)
    assert e["action"] == "key.revoke"
    assert e["result"].startswith("refused: 404 no key")

    # -- config push --------------------------------------------------------------------------
    gw = f"gw-audit-{uuid.uuid4().hex[:6]}"
    body = {"version": 7, "config": {"tick_s": 1}}
    e = one_entry(s, lambda: engineer.put(f"/v1/gateways/{gw}/config", json=body), 202)
    assert (e["action"], e["gateway"], e["result"], e["detail"]["version"]) == (
        "config.push", gw, "pending", 7)
    # The gateway's report of that version gives the entry its result (acked), once.
    pushed = e["id"]
    reported = ConfigReported(gw=gw, ts=time.time_ns(), version=7, status="applied",
                              running_version=7)
    publisher.client.publish(publisher.topics.config_reported(gw), encode_message(reported),
                             qos=1, retain=True).wait_for_publish(5)
    acked = wait_until(lambda: next((x for x in entries(s, limit=20) if x["id"] == pushed
                                     and x["result"] != "pending"), None))
    assert acked["result"] == "acked"
    assert acked["detail"]["running_version"] == 7
    e = one_entry(s, lambda: engineer.put(f"/v1/gateways/{gw}/config",
                                          json={**body, "version": 8}), 202)
    rejected = ConfigReported(gw=gw, ts=time.time_ns(), version=8, status="rejected",
                              reason="serial url not allowed", running_version=7)
    publisher.client.publish(publisher.topics.config_reported(gw), encode_message(rejected),
                             qos=1, retain=True).wait_for_publish(5)
    failed = wait_until(lambda: next((x for x in entries(s, limit=20) if x["id"] == e["id"]
                                      and x["result"] != "pending"), None))
    assert failed["result"] == "failed: rejected: serial url not allowed"
    e = one_entry(s, lambda: viewer.put(f"/v1/gateways/{gw}/config", json=body), 403)
    assert (e["action"], e["gateway"], e["actor"]["role"]) == ("config.push", gw, "viewer")
    e = one_entry(s, lambda: engineer.put(f"/v1/gateways/{gw}/config", json={"v": 1}), 400)
    assert e["action"] == "config.push"
    assert e["result"].startswith("refused: 400")
    # a path that is no gateway id is refused, and not written as one
    e = one_entry(s, lambda: engineer.put("/v1/gateways/_bad$id/config", json=body), 400)
    assert e["gateway"] is None

    # -- alert rules --------------------------------------------------------------------------
    rule = {"name": f"PM2.5 ({gw})", "kind": "threshold", "measurement": "AirQualityObserved",
            "field": "pm25", "op": ">", "threshold": 35, "duration_s": 0}
    e = one_entry(s, lambda: operator.post("/v1/alert-rules", json=rule), 201)
    rule_id = int(e["target"])
    assert (e["action"], e["result"]) == ("alert_rule.create", "ok")
    e = one_entry(s, lambda: viewer.post("/v1/alert-rules", json=rule), 403)
    assert e["action"] == "alert_rule.create"
    assert e["result"].startswith("refused: 403")
    e = one_entry(s, lambda: operator.put(f"/v1/alert-rules/{rule_id}",
                                          json={**rule, "severity": "critical"}), 200)
    assert (e["action"], e["target"]) == ("alert_rule.update", str(rule_id))
    e = one_entry(s, lambda: operator.put("/v1/alert-rules/999999", json=rule), 404)
    assert e["action"] == "alert_rule.update"
    assert e["result"].startswith("refused: 404")

    # -- alert acknowledgements ---------------------------------------------------------------
    publisher.birth(gw, [device("aq-1", "air-quality")])
    publisher.reading(gw, "aq-1", "AirQualityObserved", {"pm25": 90.0})
    alert_id = wait_until(lambda: next(
        (a["id"] for a in s.get("/v1/alerts", params={"gateway": gw}).json()["items"]
         if a["rule_id"] == rule_id), None))
    e = one_entry(s, lambda: viewer.post(f"/v1/alerts/{alert_id}/ack", json={}), 403)
    assert e["action"] == "alert.ack"
    assert e["target"] == alert_id
    e = one_entry(s, lambda: operator.post(f"/v1/alerts/{alert_id}/ack",
                                           json={"note": "crew sent"}), 200)
    assert (e["action"], e["target"], e["gateway"], e["result"]) == (
        "alert.ack", alert_id, gw, "ok")
    e = one_entry(s, lambda: operator.post("/v1/alerts/0123456789abcdef/ack", json={}), 404)
    assert e["result"].startswith("refused: 404")
    e = one_entry(s, lambda: operator.post("/v1/alerts/ack", json={"ids": [alert_id]}), 200)
    assert (e["action"], e["detail"]["count"], e["detail"]["already"]) == ("alert.ack", 0, 1)

    e = one_entry(s, lambda: operator.delete(f"/v1/alert-rules/{rule_id}"), 204)
    assert (e["action"], e["target"], e["result"]) == ("alert_rule.delete", str(rule_id), "ok")
    e = one_entry(s, lambda: operator.delete(f"/v1/alert-rules/{rule_id}"), 404)
    assert e["result"].startswith("refused: 404")


def test_requests_without_a_valid_key_and_reads_leave_nothing(api_stack: ApiStack) -> None:
    s = api_stack
    before = total(s)
    with httpx.Client(base_url=s.url, timeout=30) as anonymous:
        assert anonymous.post("/v1/keys", json={"name": "x", "role": "admin"}).status_code == 401
    with httpx.Client(base_url=s.url, headers={"X-API-Key": "sck_" + "A" * 43},
                      timeout=30) as forged:
        assert forged.delete(f"/v1/keys/{uuid.uuid4().hex}").status_code == 401
    assert s.get("/v1/keys", "admin").status_code == 200
    assert s.get("/v1/alert-rules").status_code == 200
    assert total(s) == before


def test_the_trail_is_for_admins_and_filters_and_pages(api_stack: ApiStack) -> None:
    s = api_stack
    for role in (None, "viewer", "operator", "engineer"):
        assert s.get("/v1/audit", role).status_code in (401, 403)
    gw = f"gw-page-{uuid.uuid4().hex[:6]}"
    engineer = s.client("engineer")
    for version in (1, 2, 3):
        engineer.put(f"/v1/gateways/{gw}/config", json={"version": version, "config": {}})
    s.client("viewer").put(f"/v1/gateways/{gw}/config", json={"version": 4, "config": {}})
    mine = entries(s, gateway=gw)
    assert [e["detail"]["version"] for e in mine[1:]] == [3, 2, 1]  # newest first
    assert [e["id"] for e in mine] == sorted((e["id"] for e in mine), reverse=True)
    page = s.get("/v1/audit", "admin", params={"gateway": gw, "limit": 2}).json()
    assert (len(page["items"]), page["total"], page["next_offset"]) == (2, 4, 2)
    rest = s.get("/v1/audit", "admin", params={"gateway": gw, "limit": 2, "offset": 2}).json()
    assert rest["next_offset"] is None
    assert {e["id"] for e in page["items"] + rest["items"]} == {e["id"] for e in mine}
    assert len(entries(s, gateway=gw, result="refused")) == 1
    # pending until the gateway reports each version (none does here)
    assert len(entries(s, gateway=gw, result="pending", actor="test-engineer")) == 3
    assert len(entries(s, gateway=gw, actor="test-viewer")) == 1
    assert {e["action"] for e in entries(s, action="config.")} == {"config.push"}
    assert entries(s, action="config", gateway=gw) == mine  # a prefix
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert entries(s, gateway=gw, since=future) == []
    assert len(entries(s, gateway=gw, until=future)) == 4
    assert s.get("/v1/audit", "admin", params={"action": "Bad Action"}).status_code == 400


def test_pending_results_are_set_once_and_old_entries_pruned(tmp_path: Path) -> None:
    asyncio.run(_pending_and_pruned(tmp_path))


async def _pending_and_pruned(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    db.create_schema(seed_rules=False)
    audit = AuditLog(db, keep_days=1)
    entry = await audit.record(actor=None, action="command.ping", gateway="gw-1",
                               detail={"a": 1}, result="pending")
    done = await audit.record(actor=None, action="key.create", result="ok")
    await audit.set_result(entry, "acked", {"elapsed_s": 0.5})
    await audit.set_result(entry, "timeout")  # not pending any more: ignored
    await audit.set_result(done, "failed: x")  # never pending: ignored
    rows, count = audit.query()
    assert count == 2
    by_id = {r.id: r for r in rows}
    assert by_id[entry].result == "acked"
    assert by_id[entry].result_at is not None
    assert '"elapsed_s":0.5' in by_id[entry].detail
    assert '"a":1' in by_id[entry].detail
    assert by_id[done].result == "ok"
    # a huge detail is replaced by a note, never stored whole
    big = await audit.record(actor=None, action="config.push", detail={"x": "y" * 10_000},
                             result="ok")
    assert '"truncated":true' in audit.query(action="config.push")[0][0].detail
    assert audit.prune(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)) == 0
    assert audit.prune(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == 3
    assert audit.query()[1] == 0
    assert big > done
    db.dispose()
