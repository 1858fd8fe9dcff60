"""Live push cost and its instruments: readings nobody follows are not encoded, and the time a
broker message takes and an event's way from the hub to the socket are on /metrics."""

from __future__ import annotations

import gc
import json
import re

import pytest
from api_helpers import ApiStack, Publisher, wait_until
from websockets.sync.client import connect

from api import ApiSettings, create_app
from api.state import Hub, parse_filter


def test_the_hub_wants_only_what_some_filter_accepts() -> None:
    hub = Hub(queue_size=10)
    assert not hub.wants("air", "a", None)  # nobody listens
    hub.subscribe(parse_filter([], ["a"], []))
    assert hub.wants("air", "a", None)
    assert not hub.wants("air", "b", None)
    assert hub.wants("alert", "b", None)  # alerts pass a device filter, as in matches()
    hub.subscribe(parse_filter(["traffic"], [], ["north"]))
    assert hub.wants("traffic", "b", "north")
    assert not hub.wants("traffic", "b", "south")
    assert not hub.wants("traffic", "b", None)


def test_readings_of_devices_nobody_follows_are_not_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(ApiSettings(database_url="sqlite://", topic_root="t"))
    services = app.state.services
    services.hub.subscribe(parse_filter([], ["followed"], []))
    import api.state._intake as module

    encoded: list[object] = []
    real = module._encoder.encode

    class Counting:
        def encode(self, obj: object) -> bytes:
            encoded.append(obj)
            return real(obj)

    monkeypatch.setattr(module, "_encoder", Counting())
    from telemetry import Batch, Reading, encode_batch

    readings = [Reading(device=f"d{i}", measurement="AirQualityObserved", ts=1_767_225_600 *
                        10**9, fields={"pm25": 1.0}) for i in range(20)]
    readings.append(Reading(device="followed", measurement="AirQualityObserved",
                            ts=1_767_225_600 * 10**9, fields={"pm25": 2.0}))
    services.receive("t/v1/gw/telemetry", encode_batch(Batch(gateway="gw", seq=0,
                                                             readings=readings)))
    services.intake.flush()
    assert len(services.live) == 21
    assert len(encoded) == 1  # the followed device's event only (was 21)


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.integration
def test_handling_and_push_delays_are_measured(api_stack: ApiStack,
                                               publisher: Publisher) -> None:
    def metrics() -> str:
        return api_stack.get("/metrics", role="admin").text

    before = metrics()
    url = api_stack.url.replace("http://", "ws://") + "/v1/stream/ws?device=tail-aq"
    with connect(url, additional_headers={"X-API-Key": api_stack.keys["viewer"]}) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        publisher.reading("tail-gw", "tail-other", "AirQualityObserved", {"pm25": 1.0})
        publisher.reading("tail-gw", "tail-aq", "AirQualityObserved", {"pm25": 2.0})
        while json.loads(ws.recv(timeout=5))["type"] != "reading":
            pass
    delay = "smartcity_api_stream_delay_seconds_count"
    handled = "smartcity_api_mqtt_handle_seconds_count"
    def pushed() -> str | None:
        text = metrics()
        return text if _sample(text, delay) > _sample(before, delay) else None

    after = wait_until(pushed)
    assert _sample(after, delay) - _sample(before, delay) == 1
    assert _sample(after, handled) - _sample(before, handled) >= 2
    assert _sample(after, "smartcity_api_mqtt_handle_seconds_sum") > 0


@pytest.mark.integration
def test_full_collections_are_timed(api_stack: ApiStack) -> None:
    name = "smartcity_api_gc_full_pause_seconds_count"
    before = _sample(api_stack.get("/metrics", role="admin").text, name)
    gc.collect()  # the API serves on a thread of this process: its collector is this one
    after = _sample(api_stack.get("/metrics", role="admin").text, name)
    assert after >= before + 1
