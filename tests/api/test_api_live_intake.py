"""The broker's path into the live state (api.state._intake): followed readings pushed at
once, batches applied after, in order, from a bounded backlog; the same state and alerts as
applying every message in line."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from api import ApiSettings, create_app
from api._services import Services
from api.state import Hub, Rule, Subscriber, parse_filter, series_key
from api.state._hub import FOLLOWED_SCAN_MAX
from telemetry import Batch, Birth, DeviceInfo, Location, Reading, encode_batch, encode_message

T0 = 1_767_225_600 * 10**9
TOPIC = "t/v1/{}/telemetry"


def _services() -> Services:
    services: Services = create_app(
        ApiSettings(database_url="sqlite://", topic_root="t")
    ).state.services
    return services


def _batch(gw: str, seq: int, *readings: tuple[str, str, dict[str, float], int]) -> bytes:
    return encode_batch(
        Batch(
            gateway=gw,
            seq=seq,
            readings=[
                Reading(device=d, measurement=m, ts=ts, fields=f) for d, m, f, ts in readings
            ],
        )
    )


def _follow(services: Services, device: str) -> Subscriber:
    sub = services.hub.subscribe(parse_filter([], [device], []))
    assert sub is not None
    return sub


def _fields(sub: Subscriber) -> list[object]:
    """The fields of the readings pushed to ``sub`` so far."""
    return [json.loads(e.data)["reading"]["fields"] for e in sub.queue]


def test_a_followed_reading_is_pushed_before_its_batch_is_applied() -> None:
    services = _services()
    sub = _follow(services, "probe")
    services.receive(
        TOPIC.format("gw"),
        _batch(
            "gw",
            0,
            ("other", "AirQualityObserved", {"pm25": 1.0}, T0),
            ("probe", "AirQualityObserved", {"pm25": 2.0}, T0),
        ),
    )
    assert _fields(sub) == [{"pm25": 2.0}]
    assert len(services.live) == 0  # not applied yet
    assert len(services.intake) == 1
    services.intake.flush()
    assert len(services.live) == 2
    assert len(services.intake) == 0
    assert _fields(sub) == [{"pm25": 2.0}]  # applying it does not push it again
    assert services.live.device("gw", "probe")[0].fields == {"pm25": 2.0}


def test_a_reading_older_than_the_applied_one_is_not_pushed() -> None:
    services = _services()
    sub = _follow(services, "probe")
    services.handle(
        TOPIC.format("gw"), _batch("gw", 0, ("probe", "AirQualityObserved", {"pm25": 5.0}, T0 + 10))
    )
    services.receive(
        TOPIC.format("gw"), _batch("gw", 1, ("probe", "AirQualityObserved", {"pm25": 4.0}, T0))
    )
    services.intake.flush()
    assert _fields(sub) == [{"pm25": 5.0}]
    assert services.live.device("gw", "probe")[0].fields == {"pm25": 5.0}


@pytest.mark.parametrize("follow", [None, "aq1", "unknown"])
def test_the_deferred_path_ends_in_the_same_state_and_alerts_as_the_inline_one(
    follow: str | None,
) -> None:
    """Nobody following (every batch queued undecoded), one device followed (its batches
    decoded when taken, the others when applied), a device in no batch (none decoded when
    taken): the same state, alerts and refusals as applying everything in line."""
    rule = Rule(
        id=1,
        name="pm",
        kind="threshold",
        measurement="AirQualityObserved",
        field="pm25",
        op=">",
        threshold=35.0,
        ratio=None,
        duration_s=0.0,
        severity="warning",
        enabled=True,
    )
    messages = [
        (
            TOPIC.format(f"gw{g}"),
            _batch(
                f"gw{g}",
                i,
                (f"aq{g}", "AirQualityObserved", {"pm25": 30.0 + 3 * i + g}, T0 + i * 10**9),
                (f"loop{g}", "TrafficFlowObserved", {"averageVehicleSpeed": 50.0}, T0 + i),
            ),
        )
        for i in range(4)
        for g in range(3)
    ]
    messages.insert(5, (TOPIC.format("gw1"), b"{not json"))
    results = []
    for deferred in (False, True):
        services = _services()
        services.alerts.set_rules([rule])
        if follow is not None:
            _follow(services, follow)
        for topic, payload in messages:
            (services.receive if deferred else services.handle)(topic, payload)
        services.intake.flush()
        state = {
            (g, d): [(x.measurement, x.fields, x.ts_ns, x.area) for x in rows.values()]
            for (g, d), rows in sorted(services.live.by_device.items())
        }
        alerts = sorted((a.device, a.started_ns, a.value) for a in services.alerts.active.values())
        invalid = services.metrics.registry.get_sample_value(
            "smartcity_api_mqtt_invalid_total", {"kind": "telemetry"}
        )
        results.append((state, alerts, invalid))
    assert results[0] == results[1]
    assert results[0][1]  # the rule raised something: the comparison is not empty
    assert results[0][2] == 1


def test_the_backlog_is_bounded_and_applied_oldest_first() -> None:
    services = _services()
    services.intake.backlog_max = 2
    for seq in range(5):
        services.receive(
            TOPIC.format("gw"),
            _batch("gw", seq, (f"d{seq}", "AirQualityObserved", {"pm25": 1.0}, T0)),
        )
    assert len(services.intake) == 2
    assert sorted(d for _, d in services.live.by_device) == ["d0", "d1", "d2"]


def test_a_birth_is_applied_after_the_readings_received_before_it() -> None:
    services = _services()
    services.receive(
        TOPIC.format("gw"), _batch("gw", 0, ("aq", "AirQualityObserved", {"pm25": 1.0}, T0))
    )
    birth = Birth(
        gw="gw",
        ts=T0,
        agent="test",
        devices=[
            DeviceInfo(id="aq", kind="air", location=Location(lat=59.9, lon=10.7, area="north"))
        ],
    )
    services.receive("t/v1/gw/status", encode_message(birth))
    assert len(services.intake) == 0
    # The reading arrived before the birth said where its device is.
    assert services.live.device("gw", "aq")[0].area is None
    assert services.inventory.gateways["gw"].devices["aq"].announced


def test_the_intake_task_applies_the_backlog_in_slices() -> None:
    async def main() -> tuple[int, float]:
        services = _services()
        task = asyncio.create_task(services.intake.run())
        for seq in range(200):
            services.receive(
                TOPIC.format("gw"),
                _batch("gw", seq, (f"d{seq}", "AirQualityObserved", {"pm25": 1.0}, T0)),
            )
        turns = 0
        deadline = time.monotonic() + 10
        while len(services.intake) and time.monotonic() < deadline:
            await asyncio.sleep(0)
            turns += 1
        task.cancel()
        observed = services.metrics.registry.get_sample_value(
            "smartcity_api_live_apply_delay_seconds_count"
        )
        return turns, observed or 0.0

    turns, observed = asyncio.run(main())
    assert observed == 200
    assert turns >= 2  # the loop was given back between slices


def test_the_hub_knows_cheaply_which_devices_nobody_follows() -> None:
    hub = Hub(queue_size=10)
    assert hub.follows("a")  # no subscriber: no index (wants() answers no)
    one = hub.subscribe(parse_filter([], ["a", "b"], []))
    assert one is not None
    assert hub.follows("a")
    assert not hub.follows("c")
    everything = hub.subscribe(parse_filter(["air"], [], []))
    assert everything is not None
    assert hub.follows("c")  # a subscriber without a device list may want any device
    hub.unsubscribe(everything)
    assert not hub.follows("c")
    hub.unsubscribe(one)
    assert hub.follows("c")


def test_series_keys_of_one_tag_are_those_of_the_general_form() -> None:
    assert series_key("M", {"lane": "1"}) == "M,lane=1"
    assert series_key("M", {"b": "2", "a": "1"}) == "M,a=1,b=2"
    assert series_key("M", {}) == "M"


def test_a_payload_is_searched_for_followed_devices_before_it_is_decoded() -> None:
    hub = Hub(queue_size=10)
    payload = _batch("gw", 0, ("probe", "AirQualityObserved", {"pm25": 1.0}, T0))
    assert not hub.may_follow_any(payload)  # nobody subscribes
    sub = hub.subscribe(parse_filter([], ["other", "prob"], []))
    assert sub is not None
    assert not hub.may_follow_any(payload)  # "prob" is no "probe"
    assert hub.may_follow_any(payload.replace(b'"probe"', b'"prob"'))
    assert hub.may_follow_any(payload.replace(b'"probe"', b'"\\u0070rob"'))  # escaped
    everything = hub.subscribe(parse_filter(["air"], [], []))
    assert everything is not None
    assert hub.may_follow_any(payload)  # a subscriber may want any device
    hub.unsubscribe(everything)
    many = hub.subscribe(parse_filter([], [f"d{i}" for i in range(FOLLOWED_SCAN_MAX)], []))
    assert many is not None
    assert hub.may_follow_any(payload)  # too many to search for: decoded
    hub.unsubscribe(many)
    assert not hub.may_follow_any(payload)


def test_a_followed_reading_written_with_escapes_is_pushed_at_once() -> None:
    services = _services()
    sub = _follow(services, "probe")
    payload = _batch("gw", 0, ("probe", "AirQualityObserved", {"pm25": 2.0}, T0))
    services.receive(TOPIC.format("gw"), payload.replace(b'"probe"', b'"\\u0070robe"'))
    assert _fields(sub) == [{"pm25": 2.0}]
    assert len(services.live) == 0


def test_a_batch_queued_undecoded_is_decoded_and_checked_when_applied() -> None:
    services = _services()
    _follow(services, "probe")
    services.receive(  # another gateway's batch on gw's topic: refused, counted, when applied
        TOPIC.format("gw"), _batch("gw2", 0, ("aq", "AirQualityObserved", {"pm25": 1.0}, T0))
    )
    services.receive(TOPIC.format("gw"), b'{"v":1,"gw":"gw","seq":1,"r":[]}')
    assert len(services.intake) == 2

    def invalid() -> float | None:
        return services.metrics.registry.get_sample_value(
            "smartcity_api_mqtt_invalid_total", {"kind": "telemetry"}
        )

    assert invalid() is None
    services.intake.flush()
    assert invalid() == 2
    assert len(services.live) == 0
