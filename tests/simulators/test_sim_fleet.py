"""Gateway mode against a real mosquitto (and a real ingest and influxd): presence, spool
replay after an uplink loss with original seqs, and a ledger that finds nothing lost."""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sim_helpers as h
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulators import (
    BrokerError,
    FleetConfig,
    GatewayFleet,
    InfluxHttp,
    compare_with_influx,
)
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Birth, Death, decode_batch, decode_status

pytestmark = pytest.mark.integration

TICK = 60


class Recorder:
    """A plain subscriber keeping every message in arrival order (paho thread appends)."""

    def __init__(self, broker: Mosquitto, root: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rec-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{root}/v1/#", qos=1)
        self.client.loop_start()
        assert self._ready.wait(5)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def telemetry(self) -> list[tuple[str, int, bytes]]:
        with self._lock:
            msgs = list(self.messages)
        out = []
        for topic, payload, _ in msgs:
            if topic.endswith("/telemetry"):
                batch = decode_batch(payload)
                out.append((batch.gateway, batch.seq, payload))
        return out

    def statuses(self, gateway: str) -> list[Birth | Death]:
        with self._lock:
            return [
                decode_status(p) for t, p, _ in self.messages if t.endswith(f"/{gateway}/status")
            ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder_factory() -> Iterator[Callable[[Mosquitto, str], Recorder]]:
    made: list[Recorder] = []

    def make(broker: Mosquitto, root: str) -> Recorder:
        made.append(Recorder(broker, root))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _config(broker: Mosquitto, root: str, **changes: Any) -> FleetConfig:
    return FleetConfig(
        scenario=h.scenario(**changes),
        host=broker.host,
        port=broker.port,
        topic_root=root,
        client_prefix=f"sim{uuid.uuid4().hex[:6]}",
    )


def test_uplink_loss_is_replayed_from_the_spool_with_original_seqs(
    mosquitto_factory: Callable[..., Mosquitto],
    recorder_factory: Callable[[Mosquitto, str], Recorder],
    topic_root: str,
) -> None:
    broker = mosquitto_factory()
    rec = recorder_factory(broker, topic_root)
    cut = "cab-0001"
    fleet = GatewayFleet(
        _config(
            broker,
            topic_root,
            speed=TICK / 0.1,  # a step every 0.1 s of wall time
            faults=[
                {"type": "uplink_loss", "gateways": [cut], "at_s": 4 * TICK, "duration_s": 8 * TICK}
            ],
        )
    )
    stats = fleet.run(ticks=20)
    assert _wait(lambda: len({(g, s) for g, s, _ in rec.telemetry()}) >= fleet.ledger.batches, 10)
    assert stats.connection_losses == 1
    assert stats.connects == fleet.layout.gateways + 1

    received: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for gw, seq, payload in rec.telemetry():
        received[gw].append((seq, payload))
    ledger = fleet.ledger.gateways()
    for gw, record in ledger.items():
        first: dict[int, bytes] = {}
        order = []
        for seq, payload in received[gw]:
            if seq in first:
                assert first[seq] == payload, f"{gw} seq {seq} came back with other bytes"
                continue
            first[seq] = payload
            order.append(seq)
        # every seq exactly once (replays aside), in order, and the digests agree
        assert order == list(range(record.batches)), gw
        digest = 0
        for seq in order:
            digest = zlib.crc32(first[seq], digest)
        assert digest == record.digest
        assert record.acked_batches == record.batches
    # The cut gateway kept producing while offline: its batches of steps 4..11 arrived after
    # it came back, after its will said it was lost, and behind a new birth.
    assert ledger[cut].batches == 20

    def states_of(gateway: str) -> list[str]:
        return [
            "online" if isinstance(s, Birth) else f"offline:{s.reason}"
            for s in rec.statuses(gateway)
        ]

    # The goodbye is published last, at stop: wait for it rather than race it.
    assert _wait(lambda: states_of(cut)[-1:] == ["offline:shutdown"], 10), states_of(cut)
    states = states_of(cut)
    assert states[:3] == ["online", "offline:lost", "online"]
    assert states[-1] == "offline:shutdown"
    with rec._lock:
        msgs = list(rec.messages)
    will_at = next(
        i for i, (t, p, _) in enumerate(msgs) if t.endswith(f"/{cut}/status") and b"lost" in p
    )
    late = [decode_batch(p).seq for t, p, _ in msgs[will_at:] if t.endswith(f"/{cut}/telemetry")]
    assert set(range(5, 12)) <= set(late)


def test_a_rebooting_gateway_comes_back_with_its_next_seq(
    mosquitto_factory: Callable[..., Mosquitto],
    recorder_factory: Callable[[Mosquitto, str], Recorder],
    topic_root: str,
) -> None:
    broker = mosquitto_factory()
    rec = recorder_factory(broker, topic_root)
    fleet = GatewayFleet(
        _config(
            broker,
            topic_root,
            speed=TICK / 0.05,
            faults=[
                {
                    "type": "reboot",
                    "gateways": ["sub-0001"],
                    "at_s": 3 * TICK,
                    "duration_s": 3 * TICK,
                }
            ],
        )
    )
    fleet.run(ticks=10)
    assert _wait(lambda: len(rec.telemetry()) >= fleet.ledger.batches, 10)
    seqs = [s for g, s, _ in rec.telemetry() if g == "sub-0001"]
    assert sorted(set(seqs)) == list(range(7))  # 10 steps, 3 of them spent rebooting
    states = ["online" if isinstance(s, Birth) else "offline" for s in rec.statuses("sub-0001")]
    assert states.count("online") == 2


def test_births_are_retained_and_list_the_devices(
    mosquitto_factory: Callable[..., Mosquitto],
    recorder_factory: Callable[[Mosquitto, str], Recorder],
    topic_root: str,
) -> None:
    broker = mosquitto_factory()
    fleet = GatewayFleet(_config(broker, topic_root))
    done = threading.Event()

    def run() -> None:
        fleet.run(duration_s=10)
        done.set()

    runner = threading.Thread(target=run, name="test.fleet")
    runner.start()
    try:
        assert _wait(lambda: fleet.stats.online == fleet.layout.gateways, 10)
        late = recorder_factory(broker, topic_root)  # subscribes after the births
        assert _wait(lambda: len(late.statuses("pump-0000")) == 1, 5)
        birth = late.statuses("pump-0000")[0]
        assert isinstance(birth, Birth)
        assert [d.id for d in birth.devices] == [f"water-{i:05d}" for i in range(4)]
        assert birth.devices[0].measurements["WaterConsumptionObserved"]["flow"] == "m3/h"
    finally:
        fleet.stop()
        runner.join(30)
    assert done.is_set()


def test_a_wrong_broker_fails_fast_with_a_broker_error(topic_root: str) -> None:
    from smartcity._localstack import free_port

    fleet = GatewayFleet(
        FleetConfig(
            scenario=h.scenario(), port=free_port(), topic_root=topic_root, connect_timeout_s=1
        )
    )
    with pytest.raises(BrokerError):
        fleet.run(ticks=1)


@pytest.mark.slow
def test_gateway_mode_end_to_end_into_influxdb_loses_nothing(
    mosquitto_factory: Callable[..., Mosquitto],
    influxd: Influxd,
    influx_db: str,
    topic_root: str,
) -> None:
    from ingest import WorkerThread, load_config

    broker = mosquitto_factory()
    config = load_config(
        None,
        {
            "mqtt": {
                "port": broker.port,
                "topic_root": topic_root,
                "keepalive": 10,
                "client_id": f"ingest-{uuid.uuid4().hex[:6]}",
            },
            "influx": {"url": influxd.url, "database": influx_db},
            "batch": {"max_age": 0.05},
        },
    )
    fleet = GatewayFleet(
        _config(
            broker,
            topic_root,
            speed=TICK / 0.1,
            faults=[
                {
                    "type": "uplink_loss",
                    "gateways": ["cab-0003"],
                    "at_s": 3 * TICK,
                    "duration_s": 5 * TICK,
                },
                {
                    "type": "reboot",
                    "gateways": ["bus-0001"],
                    "at_s": 2 * TICK,
                    "duration_s": 2 * TICK,
                },
                {"type": "dropout", "kinds": ["air"], "count": 2, "probability": 0.5},
            ],
        )
    )
    with WorkerThread(config):
        fleet.run(ticks=15)
        assert fleet.ledger.readings == fleet.ledger.created_readings > 0

        def complete() -> bool:
            return (
                compare_with_influx(fleet.ledger, influxd, influx_db).stored
                >= fleet.ledger.readings
            )

        _wait(complete, 30)
    report = compare_with_influx(fleet.ledger, InfluxHttp(influxd.url), influx_db)
    assert report.summary() == {
        "gateways": fleet.layout.gateways,
        "expected": fleet.ledger.readings,
        "stored": fleet.ledger.readings,
        "lost": 0,
        "extra": 0,
        "missing_seqs": 0,
    }
    assert fleet.ledger.totals()["replays"] >= 0
