"""The broker's path into the live state (api.state._intake): followed readings pushed at
once, batches applied after, in order, from a bounded backlog; the state and alerts the
readings call for, whenever the backlog is drained; a gateway's birth or death applies its
own queued batches first and leaves the others' queued."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from api import ApiSettings, create_app
from api._services import Services
from api.state import Hub, Rule, Subscriber, parse_filter, series_key
from api.state._hub import FOLLOWED_SCAN_MAX
from telemetry import (
    Batch,
    Birth,
    Death,
    DeviceInfo,
    Location,
    Reading,
    encode_batch,
    encode_message,
)

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
    services.receive(
        TOPIC.format("gw"), _batch("gw", 0, ("probe", "AirQualityObserved", {"pm25": 5.0}, T0 + 10))
    )
    services.intake.flush()
    services.receive(
        TOPIC.format("gw"), _batch("gw", 1, ("probe", "AirQualityObserved", {"pm25": 4.0}, T0))
    )
    services.intake.flush()
    assert _fields(sub) == [{"pm25": 5.0}]
    assert services.live.device("gw", "probe")[0].fields == {"pm25": 5.0}


@pytest.mark.parametrize("follow", [None, "aq1", "unknown"])
@pytest.mark.parametrize("drain", ["each", "end"])
def test_the_backlog_ends_in_the_state_and_alerts_its_readings_call_for(
    follow: str | None, drain: str
) -> None:
    """Nobody following (every batch queued undecoded), one device followed (its batches
    decoded when taken, the others when applied), a device in no batch (none decoded when
    taken); the backlog drained after every message (as if applied in line) or once at the
    end: the latest reading of every series, the alerts the rule raises on the readings'
    own values and times, and the bad batch counted once."""
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
    readings = {
        (g, i): (
            (f"aq{g}", "AirQualityObserved", {"pm25": 30.0 + 3 * i + g}, T0 + i * 10**9),
            (f"loop{g}", "TrafficFlowObserved", {"averageVehicleSpeed": 50.0 + i}, T0 + i),
        )
        for i in range(4)
        for g in range(3)
    }
    messages = [
        (TOPIC.format(f"gw{g}"), _batch(f"gw{g}", i, *rs)) for (g, i), rs in readings.items()
    ]
    messages.insert(5, (TOPIC.format("gw1"), b"{not json"))
    services = _services()
    services.alerts.set_rules([rule])
    if follow is not None:
        _follow(services, follow)
    for topic, payload in messages:
        services.receive(topic, payload)
        if drain == "each":
            services.intake.flush()
    if drain == "end":
        assert len(services.intake) == len(readings) + 1
        services.intake.flush()
    assert len(services.intake) == 0
    state = {
        (g, d): [(x.measurement, x.fields, x.ts_ns, x.area) for x in rows.values()]
        for (g, d), rows in sorted(services.live.by_device.items())
    }
    expected = {
        (f"gw{g}", device): [(measurement, fields, ts, None)]
        for (g, i), rs in sorted(readings.items())
        for device, measurement, fields, ts in rs
        if i == 3  # each series' newest
    }
    assert state == dict(sorted(expected.items()))
    # pm25 30+3i+g is above 35 from i = 2 on for every gateway: raised at that reading's
    # time, its value the newest reading's.
    alerts = sorted((a.device, a.started_ns, a.value) for a in services.alerts.active.values())
    assert alerts == [(f"aq{g}", T0 + 2 * 10**9, 39.0 + g) for g in range(3)]
    invalid = services.metrics.registry.get_sample_value(
        "smartcity_api_mqtt_invalid_total", {"kind": "telemetry"}
    )
    assert invalid == 1
    applied = services.metrics.registry.get_sample_value(
        "smartcity_api_live_apply_delay_seconds_count"
    )
    assert applied == len(messages)  # each batch applied (or refused) once


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


def _applied(services: Services) -> float:
    count = services.metrics.registry.get_sample_value(
        "smartcity_api_live_apply_delay_seconds_count"
    )
    return count or 0.0


def _birth(gw: str, device: str, area: str) -> bytes:
    info = DeviceInfo(id=device, kind="air", location=Location(lat=59.9, lon=10.7, area=area))
    return encode_message(Birth(gw=gw, ts=T0, agent="test", devices=[info]))


def test_a_birth_applies_only_its_own_gateways_queued_batches() -> None:
    services = _services()
    for seq, (gw, pm25) in enumerate([("a", 1.0), ("b", 10.0), ("a", 2.0), ("b", 20.0)]):
        reading = (f"{gw}-aq", "AirQualityObserved", {"pm25": pm25}, T0)
        services.receive(TOPIC.format(gw), _batch(gw, seq, reading))
    services.receive("t/v1/b/status", _birth("b", "b-aq", "north"))
    # b's two batches, in their order (same timestamp: the later one is kept), before its
    # birth: their readings have no area yet.
    (b_aq,) = services.live.device("b", "b-aq")
    assert (b_aq.fields, b_aq.area) == ({"pm25": 20.0}, None)
    assert services.inventory.gateways["b"].devices["b-aq"].announced
    assert services.live.device("a", "a-aq") == []
    assert len(services.intake) == 2
    assert _applied(services) == 2
    services.receive(
        TOPIC.format("b"), _batch("b", 4, ("b-aq", "AirQualityObserved", {"pm25": 30.0}, T0))
    )
    services.intake.apply_backlog(0.0)  # the oldest batch left: a's first, not b's new one
    assert services.live.device("a", "a-aq")[0].fields == {"pm25": 1.0}
    assert services.live.device("b", "b-aq")[0].fields == {"pm25": 20.0}
    services.intake.flush()
    assert services.live.device("a", "a-aq")[0].fields == {"pm25": 2.0}
    (b_aq,) = services.live.device("b", "b-aq")
    assert (b_aq.fields, b_aq.area) == ({"pm25": 30.0}, "north")
    assert len(services.intake) == 0
    assert _applied(services) == 5  # each batch once, its delay observed once


def test_a_death_after_its_own_queued_readings_keeps_them() -> None:
    services = _services()
    services.receive(
        TOPIC.format("a"), _batch("a", 0, ("a-aq", "AirQualityObserved", {"pm25": 1.0}, T0))
    )
    services.receive(
        TOPIC.format("b"), _batch("b", 0, ("b-aq", "AirQualityObserved", {"pm25": 2.0}, T0))
    )
    services.receive("t/v1/a/status", encode_message(Death(gw="a", ts=T0 + 1)))
    assert services.live.device("a", "a-aq")[0].fields == {"pm25": 1.0}
    assert services.inventory.gateways["a"].state == "offline"
    assert len(services.intake) == 1  # b's
    services.intake.flush()
    assert services.live.device("b", "b-aq")[0].fields == {"pm25": 2.0}
    assert services.inventory.gateways["a"].state == "offline"


def test_statuses_between_queued_batches_leave_each_applied_once_in_its_gateways_order() -> None:
    """Many gateways, births among their batches (batches applied out of turn are skipped
    later, and the backlog drops them once they are most of it), drained by the task."""

    async def main() -> Services:
        services = _services()
        task = asyncio.create_task(services.intake.run())
        for seq in range(30):
            for g in range(20):
                gw = f"gw{g}"
                services.receive(
                    TOPIC.format(gw),
                    _batch(gw, seq, ("aq", "AirQualityObserved", {"pm25": float(seq)}, T0)),
                )
                if (seq + g) % 7 == 0:
                    services.receive(f"t/v1/{gw}/status", _birth(gw, "aq", f"area{g}"))
        deadline = time.monotonic() + 10
        while len(services.intake) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)  # the task applies the backlog between these turns
        task.cancel()
        return services

    services = asyncio.run(main())
    assert len(services.intake) == 0
    assert _applied(services) == 30 * 20
    for g in range(20):
        assert services.live.device(f"gw{g}", "aq")[0].fields == {"pm25": 29.0}


def test_batches_applied_out_of_turn_do_not_pile_up_behind_an_old_one() -> None:
    """One gateway's batch waits at the front while another sends a batch and a birth, over
    and over: what its births applied is dropped from the backlog, not kept behind it."""
    services = _services()
    services.receive(
        TOPIC.format("a"), _batch("a", 0, ("a-aq", "AirQualityObserved", {"pm25": 1.0}, T0))
    )
    birth = _birth("b", "b-aq", "north")
    for seq in range(2000):
        services.receive(
            TOPIC.format("b"),
            _batch("b", seq, ("b-aq", "AirQualityObserved", {"pm25": 1.0}, T0 + seq)),
        )
        services.receive("t/v1/b/status", birth)
    assert len(services.intake) == 1
    assert len(services.intake._backlog) <= 3  # the memory it holds, not only the count
    assert _applied(services) == 2000


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


def test_a_batch_whose_apply_raises_is_counted_and_the_others_are_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _services()
    intake = services.intake
    real = intake._apply_readings

    def apply(gateway: str, readings: object) -> None:
        if gateway == "gw-bug":
            raise RuntimeError("a bug in applying")
        real(gateway, readings)  # type: ignore[arg-type]

    monkeypatch.setattr(intake, "_apply_readings", apply)
    now = time.time_ns()
    for seq, gw in enumerate(["gw-a", "gw-bug", "gw-b", "gw-bug"]):
        reading = (f"d-{gw}", "AirQualityObserved", {"pm25": 1.0}, now)
        services.receive(f"t/v1/{gw}/telemetry", _batch(gw, seq, reading))
    services.intake.flush()
    assert services.metrics.live_apply_errors._value.get() == 2
    assert len(services.intake) == 0
    assert sorted(g for g, _ in services.live.by_device) == ["gw-a", "gw-b"]
