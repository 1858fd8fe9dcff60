"""Live state, inventory and live push against real mosquitto, influxd and ingest."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import ApiStack, Publisher, device, start_stack, wait_until
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Batch, Health, Reading, SpoolHealth, encode_batch, encode_message

pytestmark = pytest.mark.integration


def _ws_url(stack: ApiStack, query: str) -> str:
    return stack.url.replace("http://", "ws://") + "/v1/stream/ws?" + query


def test_reading_on_the_broker_becomes_the_latest_state(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    publisher.birth("live-gw1", [device("aq-1", "air", area="centre")])
    ts = publisher.reading("live-gw1", "aq-1", "AirQualityObserved", {"pm25": 12.5, "no2": 30.0})
    body = wait_until(
        lambda: (r := api_stack.get("/v1/live/live-gw1/aq-1")).status_code == 200 and r.json()
    )
    (reading,) = body["readings"]
    assert reading["ts_ns"] == ts
    assert reading["fields"] == {"pm25": 12.5, "no2": 30.0}
    assert reading["area"] == "centre"
    # An older reading does not replace a newer one.
    publisher.reading("live-gw1", "aq-1", "AirQualityObserved", {"pm25": 99.0}, ts=ts - 10**9)
    ts2 = publisher.reading("live-gw1", "aq-1", "AirQualityObserved", {"pm25": 13.0})
    wait_until(lambda: api_stack.get("/v1/live/live-gw1/aq-1").json()["readings"][0]["ts_ns"]
               == ts2)
    assert api_stack.get("/v1/live/live-gw1/aq-1").json()["readings"][0]["fields"] == {
        "pm25": 13.0
    }


def test_inventory_follows_birth_death_and_is_filterable_and_paged(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    for i in range(3):
        publisher.birth(f"inv-gw{i}", [device(f"loop-{i}", "loop", area=f"zone{i % 2}")])
    wait_until(lambda: api_stack.get("/v1/gateways", params={"limit": 1000}).json()["total"] >= 3)
    gw = api_stack.get("/v1/gateways/inv-gw1").json()
    assert gw["state"] == "online"
    assert gw["online"] is True
    assert [d["id"] for d in gw["device_list"]] == ["loop-1"]
    devices = api_stack.get("/v1/devices", params={"area": "zone0", "kind": "loop"}).json()
    assert {d["id"] for d in devices["items"]} == {"loop-0", "loop-2"}
    page = api_stack.get("/v1/devices", params={"kind": "loop", "limit": 2}).json()
    assert len(page["items"]) == 2
    assert page["next_offset"] == 2
    publisher.death("inv-gw2")
    wait_until(lambda: api_stack.get("/v1/gateways/inv-gw2").json()["state"] == "offline")
    offline = api_stack.get("/v1/gateways", params={"state": "offline"}).json()
    assert "inv-gw2" in {g["id"] for g in offline["items"]}
    assert api_stack.get("/v1/gateways/inv-gw2").json()["reason"] == "lost"
    publisher.clear_status("inv-gw2")
    wait_until(lambda: api_stack.get("/v1/gateways/inv-gw2").status_code == 404)


def test_gateway_summary_carries_the_spool_backlog_of_the_last_health_report(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    publisher.birth("spool-gw", [device("loop-s", "loop")])
    wait_until(lambda: api_stack.get("/v1/gateways/spool-gw").status_code == 200)
    listed = api_stack.get("/v1/gateways", params={"limit": 1000}).json()["items"]
    assert next(g for g in listed if g["id"] == "spool-gw")["spool"] is None
    reported = time.time_ns()
    spool = SpoolHealth(batches=7, readings=350, bytes=28_000, budget_bytes=1 << 20,
                        oldest_age_s=95.5, dropped_batches=1, dropped_readings=50)
    health = Health(gw="spool-gw", ts=reported, uptime_s=10.0, next_seq=8, spool=spool)
    publisher.client.publish(publisher.topics.health("spool-gw"), encode_message(health),
                             qos=1).wait_for_publish(5)

    def summary() -> dict[str, Any] | None:
        items = api_stack.get("/v1/gateways", params={"limit": 1000}).json()["items"]
        row: dict[str, Any] = next(g for g in items if g["id"] == "spool-gw")
        return row if row["spool"] else None

    row = wait_until(summary)
    assert row["spool"] == {
        "batches": 7, "readings": 350, "bytes": 28_000, "budget_bytes": 1 << 20,
        "oldest_age_s": 95.5, "dropped_batches": 1, "dropped_readings": 50,
        "reported_at": row["spool"]["reported_at"],
    }
    seconds, ns = divmod(reported, 10**9)
    assert row["spool"]["reported_at"] == (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 10**6:03d}Z"
    )
    # A health report that is not one is counted and ignored; the last good one stays.
    publisher.client.publish(publisher.topics.health("spool-gw"), b'{"gw": "spool-gw"}',
                             qos=1).wait_for_publish(5)
    publisher.reading("spool-gw", "loop-s", "TrafficFlowObserved", {"intensity": 1.0})
    wait_until(lambda: api_stack.get("/v1/live/spool-gw/loop-s").status_code == 200)
    assert (summary() or {}).get("spool") == row["spool"]


def test_reading_arrives_over_websocket_with_filters(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    url = _ws_url(api_stack, "kind=air&device=ws-aq")
    with connect(url, additional_headers={"X-API-Key": api_stack.keys["viewer"]}) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello"
        assert hello["filter"]["kind"] == ["air"]
        publisher.reading("ws-gw", "ws-bus", "Vehicle", {"latitude": 1.0, "longitude": 2.0})
        publisher.reading("ws-gw", "ws-other", "AirQualityObserved", {"pm25": 1.0})
        ts = publisher.reading("ws-gw", "ws-aq", "AirQualityObserved", {"pm25": 21.0})
        event = _next_of_type(lambda: json.loads(ws.recv(timeout=5)), "reading")
        assert event["kind"] == "air"
        assert event["reading"]["device"] == "ws-aq"
        assert event["reading"]["ts_ns"] == ts


def test_websocket_authenticates_by_first_message_and_refuses_bad_keys(
    api_stack: ApiStack,
) -> None:
    with connect(_ws_url(api_stack, "kind=air")) as ws:
        ws.send(json.dumps({"type": "auth", "key": api_stack.keys["viewer"]}))
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
    for query, headers in (
        ("kind=air&key=sck_wrong", {}),
        ("kind=nonsense", {"X-API-Key": api_stack.keys["viewer"]}),
    ):
        with (
            connect(_ws_url(api_stack, query), additional_headers=headers) as ws,
            pytest.raises(ConnectionClosedError, match="1008"),
        ):
            ws.recv(timeout=5)


def _next_of_type(read: Any, kind: str) -> dict[str, Any]:
    for _ in range(50):
        event: dict[str, Any] = read()
        if event["type"] == kind:
            return event
    raise AssertionError(f"no {kind} event")


def test_reading_arrives_over_sse(api_stack: ApiStack, publisher: Publisher) -> None:
    events: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", f"{api_stack.url}/v1/stream/sse", params={"device": "sse-aq"},
            headers={"X-API-Key": api_stack.keys["viewer"]}, timeout=10,
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    connected.set()
                    events.append(event)
                    if event["type"] == "reading":
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert connected.wait(5)
    ts = publisher.reading("sse-gw", "sse-aq", "AirQualityObserved", {"pm25": 5.0})
    thread.join(10)
    assert events[0]["type"] == "hello"
    assert events[-1]["type"] == "reading"
    assert events[-1]["reading"]["ts_ns"] == ts


def _stuck_websocket(stack: ApiStack, query: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = stack.server.settings.host, stack.server.settings.port
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET /v1/stream/ws?{query} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
         f"X-API-Key: {stack.keys['viewer']}\r\n\r\n").encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


@pytest.mark.slow
def test_slow_client_is_dropped_and_never_slows_the_others(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    root, database = f"t{uuid.uuid4().hex[:12]}", f"api_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    stack = start_stack(mosquitto, influxd, root=root, database=database,
                        db_path=tmp_path / "api.sqlite3", stream_queue=20,
                        stream_send_timeout_s=1.0)
    publisher = Publisher(mosquitto, root)
    stuck: socket.socket | None = None
    try:
        stuck = _stuck_websocket(stack, "kind=other")
        services = stack.server.services
        wait_until(lambda: len(services.hub) == 1)
        received: list[int] = []
        with connect(_ws_url(stack, "kind=other"),
                     additional_headers={"X-API-Key": stack.keys["viewer"]},
                     max_size=None, max_queue=None) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            # 150 readings of 32 KiB at 100/s: far more than the stuck socket's buffers hold,
            # and more than its queue of 20 holds during the 1 s send timeout.
            blob = {f"s{i}": "x" * 1000 for i in range(32)}
            start = time.monotonic()
            for n in range(150):
                publisher.reading("slow-gw", "blob", "Blob", {**blob, "n": n})
                time.sleep(0.01)
            while len(received) < 150:
                event = json.loads(ws.recv(timeout=5))
                if event["type"] == "reading":
                    received.append(event["reading"]["fields"]["n"])
            elapsed = time.monotonic() - start
        # The healthy client got every event, in order, at publishing speed.
        assert received == list(range(150))
        assert elapsed < 10
        # The stuck one overflowed its queue (oldest dropped) and was disconnected (1013).
        wait_until(lambda: services.metrics.stream_disconnected._value.get() >= 1, timeout=10)
        assert services.hub.dropped_total > 0
        wait_until(lambda: len(services.hub) == 0)
    finally:
        if stuck is not None:
            stuck.close()
        publisher.close()
        stack.close()
        influxd.drop_database(database)


def test_restarted_api_is_warmed_from_influxdb(
    mosquitto: Mosquitto, influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    now = time.time_ns()
    lines = [
        f"TrafficFlowObserved,device=loop-9,gateway=warm-gw,lane=1 intensity=500,"
        f'averageVehicleSpeed=40.5,quality="good" {now - 120 * 10**9}',
        f"TrafficFlowObserved,device=loop-9,gateway=warm-gw,lane=1 intensity=520,"
        f'averageVehicleSpeed=42.5,quality="good" {now - 60 * 10**9}',
        f"TrafficFlowObserved,device=loop-9,gateway=warm-gw,lane=2 intensity=300,"
        f'averageVehicleSpeed=10.0,quality="uncertain" {now - 60 * 10**9}',
        f'Vehicle,device=bus-9,gateway=warm-gw latitude=59.9,longitude=10.7,routeId="R9",'
        f'quality="good" {now - 30 * 10**9}',
    ]
    influxd.write(influx_db, "\n".join(lines).encode())
    stack = start_stack(mosquitto, influxd, root=f"t{uuid.uuid4().hex[:12]}",
                        database=influx_db, db_path=tmp_path / "api.sqlite3")
    try:
        assert stack.server.services.warmed == 3
        readings = stack.get("/v1/live/warm-gw/loop-9").json()["readings"]
        by_lane = {r["tags"]["lane"]: r for r in readings}
        assert by_lane["1"]["fields"] == {"intensity": 520.0, "averageVehicleSpeed": 42.5}
        assert by_lane["1"]["ts_ns"] == now - 60 * 10**9
        assert by_lane["2"]["quality"] == "uncertain"
        links = stack.get("/v1/transport/links").json()["items"]
        assert {(link["lane"], link["congestionLevel"]) for link in links} == {
            ("1", "free"), ("2", "severe")
        }
        (bus,) = stack.get("/v1/transport/vehicles").json()["items"]
        assert bus["routeId"] == "R9"
    finally:
        stack.close()


def test_completeness_comes_from_the_real_ingest_bookkeeping(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    config = IngestConfig(
        mqtt=MqttConfig(host=api_stack.mosquitto.host, port=api_stack.mosquitto.port,
                        topic_root=api_stack.root, client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                        group=f"g{uuid.uuid4().hex[:6]}"),
        influx=InfluxConfig(url=api_stack.influxd.url, database=api_stack.database),
    )
    with WorkerThread(config):
        now = time.time_ns()
        for seq in (0, 1, 2, 4):  # batch 3 never arrives
            batch = Batch(gateway="cmp-gw", seq=seq, readings=[
                Reading(device="m-1", measurement="WaterConsumptionObserved",
                        ts=now - (5 - seq) * 10**9, fields={"flow": float(seq)})])
            publisher.client.publish(publisher.topics.telemetry("cmp-gw"), encode_batch(batch),
                                     qos=1).wait_for_publish(5)
        completeness = wait_until(
            lambda: api_stack.get("/v1/gateways/cmp-gw").json().get("completeness"), timeout=20
        )
        completeness = wait_until(
            lambda: (c := api_stack.get("/v1/gateways/cmp-gw").json()["completeness"])
            and c["received"] == 4 and c,
            timeout=20,
        )
    assert completeness["expected"] == 5
    assert completeness["missing"] == 1
    assert completeness["ratio"] == pytest.approx(0.8)


def test_websocket_compression_is_offered_unless_switched_off(
    api_stack: ApiStack, mosquitto: Mosquitto, influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    def extensions(stack: ApiStack) -> str:
        # The client offers permessage-deflate (the websockets default, as browsers do).
        key = {"X-API-Key": stack.keys["viewer"]}
        with connect(_ws_url(stack, "kind=air"), additional_headers=key) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            assert ws.response is not None
            return ws.response.headers.get("Sec-WebSocket-Extensions", "")

    assert "permessage-deflate" in extensions(api_stack)
    plain = start_stack(mosquitto, influxd, root=f"t{uuid.uuid4().hex[:12]}",
                        database=influx_db, db_path=tmp_path / "api.sqlite3",
                        stream_ws_compression=False)
    try:
        assert extensions(plain) == ""
    finally:
        plain.close()
