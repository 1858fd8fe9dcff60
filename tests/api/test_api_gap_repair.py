"""Gap repair end to end: a batch the broker acknowledged although ingest never got it.

Real mosquitto, influxd, the API (its telemetry subscription up), a real edge agent and, at
first, no ingest worker: the API's own subscription matches the gateway's batches, so the
PUBACKs are successes (not 0x10) and the agent marks them delivered while nobody stores
them. Then an ingest worker starts and gets only the later batches. The API's repair loop
finds the seqs missing from ingest's bookkeeping, sends ``resend`` to the gateway, which
still holds them (``spool.keep_delivered_s``), and InfluxDB ends up holding every reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from api_helpers import settings_for, start_stack, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).parents[1] / "edge_agent"))
from edge_helpers import await_until, base_config, make_config, running

from api._metrics import ApiMetrics
from api.state import BrokerLink, GapRepair, Inventory
from api.storage import InfluxClient
from edge_agent import EdgeAgent
from edge_agent._agent import parse_resend_args
from ingest import InfluxConfig, IngestConfig, MqttConfig, WorkerThread, bookkeeping_line
from smartcity._localstack import Influxd, Mosquitto
from telemetry import (
    CommandRequest,
    CommandResponse,
    Reading,
    decode_message,
    encode_message,
)

GW = "gw-gap"
PER_BATCH = 20


def feed(agent: EdgeAgent, t0: int, start: int, n: int) -> None:
    agent.submit(
        [
            Reading(device="dev-1", measurement="GapTest", ts=t0 + (start + i) * 10**6,
                    fields={"v": float(start + i)})
            for i in range(n)
        ],
        None,
    )


@pytest.mark.integration
def test_batches_acked_without_ingest_are_refilled(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"gap_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    stack = start_stack(
        mosquitto, influxd, root=root, database=database, db_path=tmp_path / "api.sqlite3",
        gap_repair_interval_s=1.0, completeness_settle_s=0.5,
    )
    services = stack.server.services
    agent = EdgeAgent(make_config(base_config(tmp_path, mosquitto, root, gateway=GW)))
    ingest = WorkerThread(
        IngestConfig(
            mqtt=MqttConfig(host=mosquitto.host, port=mosquitto.port, topic_root=root,
                            client_id=f"ingest-{uuid.uuid4().hex[:6]}",
                            group=f"g{uuid.uuid4().hex[:6]}"),
            influx=InfluxConfig(url=influxd.url, database=database),
        )
    )
    # Device time one minute back: inside the completeness window, past its settle time.
    t0 = time.time_ns() - 60 * 10**9
    lost_batches = 6
    later_batches = 6
    total = (lost_batches + later_batches) * PER_BATCH

    def metric(name: str, outcome: str) -> float:
        value = services.metrics.registry.get_sample_value(name, {"outcome": outcome})
        return value or 0.0

    def seqs_stored() -> list[int]:
        q = f"SELECT distinct(\"seq\") FROM ingest_batch WHERE \"gateway\" = '{GW}'"
        result = influxd.query(q, db=database)["results"][0]
        rows = result.get("series", [{}])[0].get("values", [])
        return sorted(int(r[1]) for r in rows)

    lost = 0  # batches acknowledged while no ingest ran

    async def main() -> None:
        nonlocal lost
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10, "uplink")
            await await_until(
                lambda: GW in services.inventory.gateways
                and services.inventory.gateways[GW].state == "online",
                10, "gateway online in the API",
            )
            assert services.broker.connected
            # Phase 1: no ingest. One batch per feed (max_age_s 0.2).
            for b in range(lost_batches):
                feed(agent, t0, b * PER_BATCH, PER_BATCH)
                await asyncio.sleep(0.3)
            await await_until(
                lambda: agent.spool.stats().batches == 0
                and agent.spool.stats().delivered_batches == agent.spool.next_seq,
                10, "every batch acknowledged",
            )
            lost = agent.spool.next_seq
            # One batch per feed, unless a loaded machine merged two within max_age_s.
            assert lost >= lost_batches // 2
            # The broker said "delivered" (a subscriber matched: the API), not 0x10.
            assert agent.uplink.stats.unrouted_batches == 0
            assert influxd.count(database, "GapTest", "v") == 0
            # Phase 2: ingest starts and gets only what comes next.
            await asyncio.to_thread(ingest.start)
            seen_missing = 0.0

            async def watch_gap() -> None:  # what the repair rounds see missing
                nonlocal seen_missing
                while True:
                    value = services.metrics.registry.get_sample_value(
                        "smartcity_api_gap_repair_missing_batches"
                    )
                    seen_missing = max(seen_missing, value or 0.0)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch_gap(), name="test.watch-gap")
            for b in range(lost_batches, lost_batches + later_batches):
                feed(agent, t0, b * PER_BATCH, PER_BATCH)
                await asyncio.sleep(0.3)
            await await_until(
                lambda: influxd.count(database, "GapTest", "v") == total, 30,
                "every reading in InfluxDB",
            )
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # the bookkeeping showed the hole: seqs 0..lost-1, before the first stored one
            assert seen_missing >= lost
            await await_until(lambda: metric("smartcity_api_gap_repair_seqs_total", "found")
                              >= lost, 10, "the resend answer")
            assert agent.uplink.stats.resent_batches >= lost
            assert seqs_stored() == list(range(agent.spool.next_seq))

    try:
        asyncio.run(main())
        # exactly what the agent produced: every reading once (distinct points), every seq
        assert influxd.count(database, "GapTest", "v") == total
        values = influxd.query(
            "SELECT count(distinct(\"v\")) FROM GapTest", db=database
        )["results"][0]["series"][0]["values"][0][1]
        assert values == total
        assert metric("smartcity_api_gap_repair_seqs_total", "requested") >= lost
        assert metric("smartcity_api_gap_repair_seqs_total", "missing") == 0
        assert metric("smartcity_api_gap_repair_requests_total", "answered") >= 1
        body = wait_until(lambda: stack.get("/metrics").text, timeout=5)
        assert 'smartcity_api_gap_repair_seqs_total{outcome="found"}' in body
    finally:
        ingest.stop()
        stack.close()
        influxd.drop_database(database)


class FakeGateways:
    """Answers ``resend`` for any gateway like an agent would, pretending ``gone`` seqs are
    not held any more; records what was asked."""

    def __init__(self, broker: Mosquitto, root: str, gone: set[int]) -> None:
        self.asked: list[tuple[str, list[int]]] = []
        self.gone = gone
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fake-gw-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{root}/v1/+/cmd", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        gw = msg.topic.split("/")[2]
        req = decode_message(msg.payload, CommandRequest)
        seqs = parse_resend_args(req.args)
        with self.lock:
            self.asked.append((gw, seqs))
        missing = [s for s in seqs if s in self.gone]
        resp = CommandResponse(ok=True, result={"found": len(seqs) - len(missing),
                                                "missing": missing})
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData  # type: ignore[union-attr]
        self.client.publish(
            msg.properties.ResponseTopic,  # type: ignore[union-attr]
            encode_message(resp), qos=1, properties=props,
        )

    def take(self) -> dict[str, list[int]]:
        with self.lock:
            asked, self.asked = self.asked, []
        return dict(asked)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.integration
def test_repair_round_finds_holes_asks_once_and_skips_gone(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"gap_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    settings = settings_for(
        mosquitto, influxd, root=root, database=database,
        db_url=f"sqlite:///{tmp_path / 'api.sqlite3'}",
        gap_repair_interval_s=1.0, gap_repair_reask_rounds=2, gap_repair_max_seqs=50,
    )
    now = time.time_ns()
    t0 = now - 60 * 10**9
    lines: list[str] = []

    def book(gw: str, seq: int, ts: int) -> None:
        lines.append(bookkeeping_line(gateway=gw, seq=seq, newest_ts=ts, readings=1,
                                      rejected=0, dup=False, worker="w", received_ns=now))

    for seq in set(range(100)) - {10, 11, 12, 50}:  # holes in the middle
        book("gw-mid", seq, t0 + seq * 10**6)
    book("gw-prev", 5, now - 4200 * 10**9)  # the window before (1h): the hole starts at 6
    for seq in range(8, 21):
        book("gw-prev", seq, t0 + seq * 10**6)
    for seq in range(3, 6):  # nothing before: a gateway numbers from 0
        book("gw-new", seq, t0 + seq * 10**6)
    for seq in (0, 2):  # a hole, but the gateway is offline
        book("gw-off", seq, t0 + seq * 10**6)
    for seq in range(200, 300):  # nothing before, a long history: bounded below
        if seq != 250:
            book("gw-long", seq, t0 + seq * 10**6)
    influxd.write(database, "".join(lines).encode())
    fake = FakeGateways(mosquitto, root, gone={10})
    metrics = ApiMetrics()
    inventory = Inventory()
    for gw in ("gw-mid", "gw-prev", "gw-new", "gw-long"):
        inventory.gateway(gw).state = "online"
    inventory.gateway("gw-off").state = "offline"

    def seqs(name: str) -> float:
        value = metrics.registry.get_sample_value(
            "smartcity_api_gap_repair_seqs_total", {"outcome": name}
        )
        return value or 0.0

    async def main() -> None:
        influx = InfluxClient.from_settings(settings)
        broker = BrokerLink(settings, lambda _t, _p: None, metrics)
        repair = GapRepair(settings, influx=influx, broker=broker, inventory=inventory,
                           metrics=metrics)
        async with influx, broker:
            first = await repair.repair_round()
            assert (first.gateways, first.with_gaps) == (4, 4)
            await await_until(lambda: seqs("found") + seqs("missing") == first.requested, 10)
            asked = fake.take()
            assert asked == {
                "gw-mid": [10, 11, 12, 50],
                "gw-prev": [6, 7],
                "gw-new": [0, 1, 2],
                "gw-long": [*range(151, 200), 250],  # capped at 50, newest first
            }
            assert (seqs("requested"), seqs("found"), seqs("missing")) == (59, 58, 1)
            # next round: nothing is asked again so soon, seq 10 is gone for good; the one
            # hole left over by the cap comes now
            second = await repair.repair_round()
            assert (second.requested, second.skipped_gone, second.skipped_recent) == (1, 1, 58)
            await await_until(lambda: seqs("requested") == 60, 10)
            await await_until(lambda: fake.asked != [], 10)
            assert fake.take() == {"gw-long": [150]}
            # after gap_repair_reask_rounds rounds' time, the holes are asked for again
            await asyncio.sleep(2.0)
            third = await repair.repair_round()
            await await_until(lambda: seqs("requested") == 60 + third.requested, 10)
            await await_until(lambda: len(fake.asked) == 4, 10)
            again = fake.take()
            assert again["gw-mid"] == [11, 12, 50]
            assert third.skipped_gone == 1

    try:
        asyncio.run(main())
    finally:
        fake.close()
        influxd.drop_database(database)
