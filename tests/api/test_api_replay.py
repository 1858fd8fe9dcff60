"""The timeline replay: the map as it was, step by step, read back from InfluxDB."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from api_helpers import ApiStack, Publisher, device, wait_until

pytestmark = pytest.mark.integration

_MIN = 60 * 10**9


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")


def test_replay_gives_positions_and_congestion_per_step(
    api_stack: ApiStack, publisher: Publisher
) -> None:
    publisher.birth("rp-gw", [device("loop-r", "loop", meta={"freeFlowSpeed": "60"})])
    wait_until(lambda: api_stack.get("/v1/gateways/rp-gw").status_code == 200)
    # Two hours ago, on 10-minute steps: the bus moves north, the link clogs up, then a gap.
    base = (time.time_ns() - 2 * 3600 * 10**9) // (10 * _MIN) * (10 * _MIN)
    lines = []
    for i, (lat, speed) in enumerate([(59.90, 55.0), (59.91, 40.0), (59.92, 12.0)]):
        ts = base + i * 10 * _MIN + _MIN
        lines.append(f"Vehicle,device=bus-r,gateway=rp-bus latitude={lat},longitude=10.75 {ts}")
        # Two lanes: the step's speed is their mean.
        lines.append(f"TrafficFlowObserved,device=loop-r,gateway=rp-gw,lane=1 "
                     f"averageVehicleSpeed={speed - 2} {ts}")
        lines.append(f"TrafficFlowObserved,device=loop-r,gateway=rp-gw,lane=2 "
                     f"averageVehicleSpeed={speed + 2} {ts}")
        # A later point in the same step: the vehicle's *last* position counts.
        lines.append(f"Vehicle,device=bus-r,gateway=rp-bus latitude={lat + 0.001},longitude=10.75"
                     f" {ts + 3 * _MIN}")
    api_stack.influxd.write(api_stack.database, "\n".join(lines).encode())

    start, end = base, base + 50 * _MIN
    body = api_stack.get("/v1/transport/replay",
                         params={"start": _iso(start), "end": _iso(end), "step": "10m"}).json()
    assert body["step_s"] == 600
    assert len(body["times"]) == 5
    assert body["times"][0] == _iso(base).replace("Z", ".000Z")
    bus = next(v for v in body["vehicles"] if v["id"] == "rp-bus:bus-r")
    assert bus["positions"][0] == pytest.approx([59.901, 10.75])
    assert bus["positions"][2] == pytest.approx([59.921, 10.75])
    assert bus["positions"][3] is None  # no reading in that step
    link = next(x for x in body["links"] if x["id"] == "rp-gw:loop-r")
    assert link["speed"][:3] == pytest.approx([55.0, 40.0, 12.0])
    assert link["freeFlowSpeed"] == 60.0  # from the device's birth
    assert link["congestionLevel"] == ["free", "moderate", "severe", "unknown", "unknown"]

    # The default step keeps a range near 360 steps, never under a minute.
    body = api_stack.get("/v1/transport/replay").json()
    assert body["step_s"] == 60
    assert 360 <= len(body["times"]) <= 361


def test_replay_refuses_a_range_too_fine_for_its_step(api_stack: ApiStack) -> None:
    response = api_stack.get("/v1/transport/replay", params={
        "start": "2026-01-01T00:00:00Z", "end": "2026-01-03T00:00:00Z", "step": "10s",
    })
    assert response.status_code == 400
    assert "step" in response.text
    assert api_stack.get("/v1/transport/replay", params={"step": "1x"}).status_code == 400
    bad = api_stack.get("/v1/transport/replay", params={
        "start": "2026-01-03T00:00:00Z", "end": "2026-01-01T00:00:00Z",
    })
    assert bad.status_code == 400
