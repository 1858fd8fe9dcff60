"""The simulated fleet keeps delivered batches and answers ``resend`` as a real gateway does
(``edge_agent._commands``): against a real mosquitto, a resend request on a gateway's ``cmd``
topic brings back the original batches byte for byte, a seq not held is answered missing,
and the kept batches stay within their byte budget."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sim_helpers as h
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import _commands as edge_commands
from simulators import FleetConfig, GatewayFleet
from smartcity._localstack import Mosquitto
from telemetry import (
    MAX_RESEND_SEQS,
    CommandResponse,
    InvalidCommand,
    decode_batch,
    decode_message,
    parse_resend_args,
)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Operator:
    """Plays the API: records telemetry and sends commands with MQTT v5 request/response."""

    def __init__(self, broker: Mosquitto, root: str) -> None:
        self.root = root
        self.client_id = f"op-{uuid.uuid4().hex[:8]}"
        self.telemetry: list[tuple[str, int, bytes]] = []
        self.responses: dict[bytes, CommandResponse] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )  # fmt: skip
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(
            [(f"{root}/v1/+/telemetry", 1), (f"{root}/v1/+/cmd/response/{self.client_id}", 1)]
        )
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self._lock:
            if msg.topic.endswith("/telemetry"):
                batch = decode_batch(payload)
                self.telemetry.append((batch.gateway, batch.seq, payload))
            else:
                corr = getattr(msg.properties, "CorrelationData", b"")
                self.responses[bytes(corr)] = decode_message(payload, CommandResponse)

    def copies(self, gateway: str, seq: int) -> list[bytes]:
        with self._lock:
            return [p for g, s, p in self.telemetry if g == gateway and s == seq]

    def command(self, gateway: str, cmd: str, args: dict[str, Any]) -> CommandResponse:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{self.root}/v1/{gateway}/cmd/response/{self.client_id}"
        props.CorrelationData = corr
        body = json.dumps({"v": 1, "cmd": cmd, "args": args}).encode()
        self.client.publish(f"{self.root}/v1/{gateway}/cmd", body, qos=1, properties=props)
        _wait(lambda: corr in self.responses, 10, f"the answer to {cmd}")
        with self._lock:
            return self.responses[corr]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def running() -> Iterator[Callable[[GatewayFleet], None]]:
    """Runs fleets in threads; stops and joins them at the end."""
    started: list[tuple[GatewayFleet, threading.Thread]] = []

    def start(fleet: GatewayFleet) -> None:
        thread = threading.Thread(target=fleet.run, name="test.fleet", daemon=True)
        thread.start()
        started.append((fleet, thread))

    yield start
    for fleet, thread in started:
        fleet.stop()
        thread.join(30)


def _fleet(broker: Mosquitto, root: str, **config: Any) -> GatewayFleet:
    return GatewayFleet(FleetConfig(
        scenario=h.scenario(speed=0, tick_s=60), host=broker.host, port=broker.port,
        topic_root=root, client_prefix=f"sim{uuid.uuid4().hex[:6]}", **config,
    ))  # fmt: skip


@pytest.mark.integration
def test_resend_brings_back_the_original_batches_byte_identical_and_names_the_missing(
    mosquitto: Mosquitto, topic_root: str, running: Callable[[GatewayFleet], None]
) -> None:
    op = Operator(mosquitto, topic_root)
    try:
        fleet = _fleet(mosquitto, topic_root)
        gw = fleet.gateway_ids[0]
        running(fleet)

        def acked() -> int:
            rec = fleet.ledger.gateways().get(gw)
            return 0 if rec is None else rec.acked_batches

        _wait(lambda: acked() >= 6, 30, "six acked batches")
        fleet.pause()
        _wait(lambda: fleet.spooled_batches() == 0, 30, "the spools to drain")
        rec = fleet.ledger.gateways()[gw]
        acked_before = fleet.ledger.readings
        first = {s: op.copies(gw, s)[0] for s in range(rec.first_seq, rec.first_seq + 6)}
        gone = 10**12

        answer = op.command(gw, "resend", {"seqs": [rec.first_seq, gone],
                                           "ranges": [[rec.first_seq + 2, rec.first_seq + 5]]})
        assert answer.ok, answer
        want = [rec.first_seq, *range(rec.first_seq + 2, rec.first_seq + 6)]
        assert answer.result == {"found": 5, "missing": [gone], "requeued": 5, "waiting": 0}
        _wait(lambda: all(len(op.copies(gw, s)) == 2 for s in want), 10, "the resent batches")
        for s in want:
            assert op.copies(gw, s) == [first[s], first[s]], f"seq {s} not byte-identical"
        assert op.copies(gw, rec.first_seq + 1) == [first[rec.first_seq + 1]]
        _wait(lambda: fleet.spooled_batches() == 0, 10, "the resent batches' PUBACKs")
        # Acknowledged again, counted once: the ledger is what the platform must store.
        assert fleet.ledger.readings == acked_before
        assert fleet.ledger.gateways()[gw].acked_batches == rec.acked_batches
        assert fleet.stats.resend_requests == 1
        assert fleet.stats.resend_missing == 1
        # Still held after the resend (kept again on the new PUBACK): a second ask finds it.
        again = op.command(gw, "resend", {"seqs": [rec.first_seq]})
        assert again.result["found"] == 1

        # The same refusals as the edge agent, word for word.
        bad = op.command(gw, "resend", {"ranges": [[5, 1]]})
        assert not bad.ok
        assert bad.error == "resend: ranges[0] goes backwards (5 > 1)"
        huge = op.command(gw, "resend", {"ranges": [[0, 2**62]]})
        assert not huge.ok
        assert "more than 10000" in (huge.error or "")
        unknown = op.command(gw, "reboot", {})
        assert not unknown.ok
        assert unknown.error == (
            "unknown command 'reboot' (known: ping, reannounce, health, resend)"
        )
        assert op.command(gw, "ping", {}).result["pong"] is True
        health = op.command(gw, "health", {})
        assert health.ok
        assert health.result["gw"] == gw
    finally:
        op.close()


@pytest.mark.integration
def test_kept_batches_stay_within_their_budget_oldest_forgotten_first(
    mosquitto: Mosquitto, topic_root: str, running: Callable[[GatewayFleet], None]
) -> None:
    op = Operator(mosquitto, topic_root)
    budget = 40_000
    try:
        fleet = _fleet(mosquitto, topic_root, keep_delivered_bytes=budget)
        gw = fleet.gateway_ids[0]
        running(fleet)
        _wait(lambda: fleet.stats.kept_evicted > 20, 30, "evictions")
        fleet.pause()
        _wait(lambda: fleet.spooled_batches() == 0, 30, "the spools to drain")
        assert 0 < fleet.stats.kept_bytes <= budget
        assert fleet.stats.kept_batches == fleet.kept_batches()
        last = fleet.ledger.gateways()[gw].last_seq
        answer = op.command(gw, "resend", {"seqs": [0, last]})
        assert answer.result["missing"] == [0]  # the oldest delivery went first
        assert answer.result["requeued"] == 1
    finally:
        op.close()


@pytest.mark.integration
def test_with_keep_delivered_s_0_nothing_is_held(
    mosquitto: Mosquitto, topic_root: str, running: Callable[[GatewayFleet], None]
) -> None:
    op = Operator(mosquitto, topic_root)
    try:
        fleet = _fleet(mosquitto, topic_root, keep_delivered_s=0)
        gw = fleet.gateway_ids[0]
        running(fleet)
        _wait(lambda: fleet.ledger.readings > 0, 30, "acked readings")
        fleet.pause()
        _wait(lambda: fleet.spooled_batches() == 0, 30, "the spools to drain")
        assert fleet.kept_batches() == 0
        answer = op.command(gw, "resend", {"seqs": [0]})
        assert answer.result == {"found": 0, "missing": [0], "requeued": 0, "waiting": 0}
    finally:
        op.close()


@pytest.mark.parametrize(
    "args",
    [
        {"seqs": [3, 1, 3], "ranges": [[10, 12]]},
        {"ranges": [[0, MAX_RESEND_SEQS - 1]]},
        {"ranges": [[0, MAX_RESEND_SEQS]]},
        {"seqs": [-1]},
        {"seqs": [True]},
        {"seqs": "1"},
        {},
        {"ranges": [[1]]},
        {"ranges": [[2, 1]]},
        {"other": 1},
    ],
)
def test_the_contracts_resend_parser_agrees_with_the_edge_agents(args: dict[str, Any]) -> None:
    """The fleet parses with ``telemetry.parse_resend_args``; the edge agent still has its
    own copy (edge_agent._commands): they must not drift."""
    try:
        expected: list[int] | str = edge_commands.parse_resend_args(args)
    except edge_commands.CommandError as exc:
        expected = str(exc)
    try:
        got: list[int] | str = parse_resend_args(args)
    except InvalidCommand as exc:
        got = str(exc)
    assert got == expected
