"""Topic namespace and control-plane messages."""

from __future__ import annotations

import pytest

from telemetry import (
    Birth,
    CommandRequest,
    ConfigDesired,
    Death,
    DeviceInfo,
    Health,
    InvalidPayload,
    Location,
    MalformedPayload,
    SpoolHealth,
    TopicError,
    TopicKind,
    Topics,
    decode_message,
    decode_status,
    encode_message,
)


def test_topics_build_and_parse_back() -> None:
    t = Topics("city/oslo")
    built = {
        TopicKind.TELEMETRY: t.telemetry("gw-1"),
        TopicKind.STATUS: t.status("gw-1"),
        TopicKind.HEALTH: t.health("gw-1"),
        TopicKind.CONFIG_DESIRED: t.config_desired("gw-1"),
        TopicKind.CONFIG_REPORTED: t.config_reported("gw-1"),
        TopicKind.COMMAND: t.command("gw-1"),
        TopicKind.COMMAND_RESPONSE: t.command_response("gw-1", "api-7"),
    }
    assert built[TopicKind.TELEMETRY] == "city/oslo/v1/gw-1/telemetry"
    for kind, topic in built.items():
        assert t.parse(topic) == ("gw-1", kind)


def test_shared_subscription_filter() -> None:
    assert Topics().shared("ingest", TopicKind.TELEMETRY) == "$share/ingest/sc/v1/+/telemetry"
    assert Topics().deadletter("ingest") == "sc/v1/_sys/deadletter/ingest"


@pytest.mark.parametrize("gateway", ["a/b", "+", "#", "", "has space", "_sys"])
def test_ids_that_would_break_the_namespace_are_refused(gateway: str) -> None:
    with pytest.raises(TopicError):
        Topics().telemetry(gateway)


@pytest.mark.parametrize(
    "topic",
    ["other/v1/g/telemetry", "sc/v2/g/telemetry", "sc/v1/g/unknown", "sc/v1/_sys/deadletter/x"],
)
def test_foreign_topics_do_not_parse(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)


@pytest.mark.parametrize("root", ["", "/x", "a/", "a/+", "#"])
def test_bad_roots_are_refused(root: str) -> None:
    with pytest.raises(TopicError):
        Topics(root)


def test_birth_and_death_share_the_status_topic() -> None:
    birth = Birth(
        gw="bus-12",
        ts=1,
        agent="smartcity-edge 0.1.0",
        devices=[
            DeviceInfo(
                id="gps",
                kind="nmea-gps",
                measurements={"Vehicle": {"speed": "km/h"}},
                location=Location(lat=59.9, lon=10.7, area="centre"),
            )
        ],
    )
    assert decode_status(encode_message(birth)) == birth
    death = Death(gw="bus-12", reason="shutdown")
    assert decode_status(encode_message(death)) == death
    assert b'"state":"offline"' in encode_message(death)


def test_health_round_trips() -> None:
    health = Health(
        gw="g",
        ts=5,
        uptime_s=1.5,
        next_seq=10,
        spool=SpoolHealth(
            batches=1,
            readings=2,
            bytes=3,
            budget_bytes=4,
            oldest_age_s=None,
            dropped_batches=0,
            dropped_readings=0,
        ),
        dropped={"deadband": {"loop-1/speed": 4}},
    )
    assert decode_message(encode_message(health), Health) == health


def test_control_messages_are_validated() -> None:
    with pytest.raises(InvalidPayload):
        decode_message(b'{"v":1,"version":0,"config":{}}', ConfigDesired)
    with pytest.raises(InvalidPayload):
        decode_message(b'{"v":1,"cmd":""}', CommandRequest)
    with pytest.raises(MalformedPayload):
        decode_message(b'{"v":1,', CommandRequest)
    with pytest.raises(InvalidPayload):
        decode_status(b'{"state":"sleeping","gw":"g"}')
    with pytest.raises(InvalidPayload):
        decode_status(
            b'{"state":"online","gw":"g","ts":1,"agent":"a","location":{"lat":91,"lon":0}}'
        )
