"""Inputs survive any payload, inputs are supervised, configs are bounded (unit tests).

The end-to-end versions (a real mosquitto, a real agent, hostile local sensors and hostile
remote configs) are in ``tests/adversarial/test_edge_hostile.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import msgspec
import pytest
from edge_helpers import await_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import ConfigError, Input, PayloadRejected, Sink, parse_config
from edge_agent._supervisor import MAX_DROP_CHANNELS, InputCounters, supervise
from edge_agent.inputs import MqttSubscription, SimulatedInputConfig, check_serial_url
from edge_agent.inputs._mqtt import _Parser
from foundation import Backoff
from telemetry import TS_MAX_NS, TS_MIN_NS, Reading

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0_MS = 1_750_000_000_000
JSON_SUB = MqttSubscription(
    topic="city/+/air",
    device="{1}",
    measurement="AirQualityObserved",
    fields={"no2": "$.no2", "pm": "$.pm[0]", "label": "$.meta.label"},
    timestamp="$.ts",
    timestamp_unit="ms",
    tags={"site": "{1}"},
)
NUMBER_SUB = MqttSubscription(
    topic="city/+/temp", device="{1}", measurement="WeatherObserved", format="number",
    field="temperature",
)
VALID = {"no2": 41.5, "pm": [12, 3], "meta": {"label": "ok"}, "ts": T0_MS}


def _parse_or_rejected(parser: _Parser, topic: str, payload: bytes) -> Reading | None:
    """The only outcomes allowed: a reading that fits the contract, or a counted refusal."""
    try:
        reading = parser.parse(topic, payload)
    except PayloadRejected as exc:
        reason = exc.reason
    else:
        assert TS_MIN_NS <= reading.ts < TS_MAX_NS
        return reading
    assert reason in {"not_number", "not_json", "too_deep", "no_field", "contract"}
    return None


def test_the_measured_payloads_are_refused_or_read_never_raised() -> None:
    parser = _Parser(JSON_SUB)
    # {"t": 1e300} raised OverflowError: now the device clock is ignored, the reading kept.
    r = parser.parse("city/s1/air", b'{"no2": 1, "ts": 1e300}')
    assert (r.clock, r.fields) == ("gateway", {"no2": 1})
    for ts in (b"-1e300", b"1e308", b"123456789012345678901234567890", b"true", b'"x"'):
        r = parser.parse("city/s1/air", b'{"no2": 1, "ts": ' + ts + b"}")
        assert r.clock == "gateway"
    # deeply nested JSON raised RecursionError: now a refusal with its reason
    deep = b'{"no2": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(PayloadRejected) as info:
        parser.parse("city/s1/air", deep)
    assert info.value.reason == "too_deep"
    with pytest.raises(PayloadRejected) as info:
        parser.parse("city/s1/air", b'{"no2": "' + b"x" * 5000 + b'"}')
    assert info.value.reason == "contract"


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_become_readings_or_counted_refusals(payload: bytes) -> None:
    _parse_or_rejected(_Parser(JSON_SUB), "city/s1/air", payload)
    _parse_or_rejected(_Parser(NUMBER_SUB), "city/s1/temp", payload)


@FUZZ
@given(
    ts=st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    unit=st.sampled_from(["s", "ms", "us", "ns"]),
)
def test_any_device_timestamp_gives_a_reading(ts: float, unit: str) -> None:
    """The device clock is used when it is in the contract's range, else the gateway's."""
    sub = JSON_SUB.model_copy(update={"timestamp_unit": unit})
    reading = _parse_or_rejected(_Parser(sub), "city/s1/air", b'{"no2": 1, "ts": %s}' % (
        repr(ts).encode()))
    assert reading is not None


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.sampled_from([1e300, -1e300, 1e-300, 2**63, -(2**63) - 1])
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["no2", "pm", "meta", "label", "ts", "x"]), children,
                      max_size=4),
    max_leaves=20,
)


@FUZZ
@given(
    key=st.sampled_from(sorted(VALID)),
    value=_JSON_VALUES,
    topic_level=st.text(max_size=80),
)
def test_mutations_of_a_valid_sensor_payload(key: str, value: object, topic_level: str) -> None:
    doc = dict(VALID, **{key: value})
    _parse_or_rejected(_Parser(JSON_SUB), f"city/{topic_level}/air", msgspec.json.encode(doc))


@FUZZ
@given(data=st.data())
def test_byte_level_mutations_of_a_valid_sensor_payload(data: st.DataObject) -> None:
    payload = bytearray(json.dumps(VALID).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "nest"]))
        if op == "flip":
            payload[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            payload[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and len(payload) > 1:
            del payload[i]
        elif op == "nest":
            n = data.draw(st.sampled_from([10, 1000, 3000]))
            payload[i:i] = b"[" * n + b"]" * n
    _parse_or_rejected(_Parser(JSON_SUB), "city/s1/air", bytes(payload))


# -- counters and supervision -----------------------------------------------------------------


def test_rejections_are_counted_per_reason_and_channels_stay_bounded() -> None:
    c = InputCounters()
    for i in range(MAX_DROP_CHANNELS + 50):
        c.count_reject("local", "not_json", f"city/s{i}/air")
    c.count_reject("local", "too_deep", "city/s0/air")
    per = c.drops["input_parse"]
    assert len(per) == MAX_DROP_CHANNELS + 1
    assert per["local:(other)"] == 50
    assert per["local:city/s0/air"] == 2
    assert c.rejects == {"local": {"not_json": MAX_DROP_CHANNELS + 50, "too_deep": 1}}


class _Flaky(Input):
    """Fails ``fails`` times, then runs until cancelled."""

    def __init__(self, fails: int) -> None:
        super().__init__("flaky")
        self.fails = fails
        self.runs = 0

    async def run(self, sink: Sink) -> None:
        self.runs += 1
        self.state = "up"
        if self.runs <= self.fails:
            raise ValueError(f"boom {self.runs}")
        await asyncio.Event().wait()


class _NullSink:
    def submit(self, readings: object, ack: object) -> None: ...

    def count_drop(self, stage: str, channel: str, n: int = 1) -> None: ...

    def count_reject(self, input_name: str, reason: str, where: str) -> None: ...


def test_a_failing_input_is_restarted_with_backoff_until_cancelled() -> None:
    async def main() -> None:
        flaky = _Flaky(fails=3)
        counters = InputCounters()
        states: list[str] = []
        task = asyncio.create_task(
            supervise(flaky, _NullSink(), counters, backoff=Backoff(initial=0.05, maximum=0.1))
        )
        while flaky.runs < 4:
            if not states or states[-1] != flaky.state:
                states.append(flaky.state)
            await asyncio.sleep(0.005)
        await await_until(lambda: flaky.state == "up", 2)
        assert counters.failures == {"flaky": 3}
        assert "failed" in states
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


# -- local validation: serial URLs, register maps, sizes ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "spy:///dev/ttyUSB0?file=/var/lib/smartcity-edge/spool.sqlite3",
        "SPY:///dev/ttyUSB0",
        "alt:///dev/ttyUSB0?class=PosixPollSerial",
        "hwgrep://.*",
        "cp2110://0001:0002",
        "socket://10.0.0.5:4001?logging=debug",
        "loop://?logging=debug",
        "rfc2217://10.0.0.5:2217?logging=debug",
        "ttyUSB0",
        "/dev/ttyUSB0?x=1",
        "/dev/tty\x00USB0",
    ],
)
def test_serial_urls_outside_the_allowlist_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        check_serial_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "/dev/ttyUSB0",  # absent (unplugged) is fine: the link retries
        "/dev/null",  # a character device
        "socket://10.0.0.5:4001",
        "rfc2217://10.0.0.5:2217?poll_modem&timeout=3",
        "loop://",
    ],
)
def test_serial_urls_in_the_allowlist_are_accepted(url: str) -> None:
    check_serial_url(url)


def test_a_pty_link_is_a_serial_port_and_a_regular_file_is_not(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        link = tmp_path / "ttyFW0"
        link.symlink_to(os.ttyname(slave))
        check_serial_url(str(link))
    finally:
        os.close(master)
        os.close(slave)
    spool = tmp_path / "spool.sqlite3"
    spool.write_bytes(b"SQLite format 3\x00")
    with pytest.raises(ValueError, match="not a character device"):
        check_serial_url(str(spool))


def _config(*inputs: dict[str, object]) -> dict[str, object]:
    return {"gateway": {"id": "gw"}, "broker": {"host": "localhost"}, "inputs": list(inputs)}


def test_the_config_refuses_spy_urls_map_paths_and_oversized_simulations() -> None:
    spy = {"type": "firmware", "name": "fw", "serial": {"url": "spy:///dev/x?file=/tmp/s"}}
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.serial\.url: serial URL scheme"):
        parse_config(_config(spy), source="edge.yaml")
    meter = {"type": "modbus", "name": "m", "device": "d", "tcp": {"host": "10.0.0.5"}}
    for ref in ("../../../../etc/passwd", "maps/x.yaml", "eastron-sdm630/../../x"):
        with pytest.raises(ConfigError, match=r"inputs\[0\]\.register_map: .* neither"):
            parse_config(_config(dict(meter, register_map=ref)), source="edge.yaml")
    sim = {"type": "simulated", "name": "sim"}
    for too_big, match in [
        ({"devices": 1e9}, r"inputs\[0\]\.devices: Input should be less than or equal to"),
        ({"fields": [f"f{i}" for i in range(65)]}, r"inputs\[0\]\.fields: List should have"),
        ({"rate_hz": 1000}, r"inputs\[0\]\.rate_hz: Input should be less than or equal"),
        ({"devices": 10_000, "rate_hz": 50}, r"values/s, more than 100000"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_config(_config(dict(sim, **too_big)), source="edge.yaml")
    assert SimulatedInputConfig(type="simulated", name="s", devices=1000, rate_hz=10).devices
