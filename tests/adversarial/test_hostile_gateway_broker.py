"""A hostile gateway against the shipped broker (deploy/mosquitto/, users made by the shipped
provision.sh): it holds its own valid credentials and tries to steal or destroy ingest's
telemetry, listen to other gateways, speak for them, or administer the broker.

Both attacks a security review measured against the former password_file/acl_file broker
(mosquitto 2.0.11 grants every SUBSCRIBE under acl_file and checks reads only on delivery):

- joining ingest's shared subscription `$share/ingest/...` as a member that may read nothing,
  so that the broker drops the hijacker's round-robin share (one hijacker: 50% of another
  gateway's batches lost; three offline sessions: 75%);
- connecting with ingest's client id `ingest-0`, which took over its persistent session and
  dropped the 200 batches queued in it.

The dynamic-security plugin refuses both before any message or session is touched:
SUBACK 0x87 for the subscription, CONNACK 0x87 for the client id.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from telemetry import Batch, Reading, encode_batch
from tests.foundation.test_deploy_broker import (
    NOT_AUTHORIZED,
    Client,
    IngestProcess,
    ShippedBroker,
    shipped_broker,
    wait_until,
)

pytestmark = pytest.mark.integration

GATEWAYS = {"gw-honest": "pw-honest", "gw-hostile": "pw-hostile"}
HONEST, HOSTILE = "gw-honest", "gw-hostile"
# MQTT 3.1.1 CONNACK return code 5 "not authorised": paho reports it as reason code 0x87.
V311_NOT_AUTHORIZED = NOT_AUTHORIZED
V311_SUBSCRIBE_FAILURE = 0x80
MEASUREMENT = "TrafficFlowObserved"
PER_BATCH = 5


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    b = shipped_broker(tmp_path_factory.mktemp("hostile-broker"), GATEWAYS)
    yield b
    b.stop()


def gateway(broker: ShippedBroker, gw: str, **kwargs: Any) -> Client:
    return Client(broker, gw, GATEWAYS[gw], **kwargs)


def test_a_gateway_cannot_join_any_share_group(broker: ShippedBroker) -> None:
    member = Client(broker, "_ingest-0")  # a stand-in ingest worker in the real share group
    honest = gateway(broker, HONEST)
    hostile = gateway(broker, HOSTILE, session_expiry=3600)
    old: Client | None = None
    try:
        assert member.connected() == 0
        assert member.subscribe("$share/ingest/sc/v1/+/telemetry") == [1]
        assert honest.connected() == 0
        assert hostile.connected() == 0
        for topic in (
            "$share/ingest/sc/v1/+/telemetry",       # ingest's own group
            "$share/ingest/sc/v1/gw-honest/telemetry",
            "$share/ingest/sc/v1/gw-hostile/telemetry",  # even for its own telemetry
            "$share/ingest/#",
            "$share/evil/sc/v1/+/telemetry",
            "$share/evil/sc/v1/gw-hostile/cmd",       # its own commands, but shared
            "$share/+/sc/v1/+/telemetry",
        ):
            assert hostile.subscribe(topic) == [NOT_AUTHORIZED], topic
        hostile.close()  # leaves an offline persistent session: with no share in it
        # The same over MQTT 3.1.1 (after the v5 connection is gone: one client id each).
        old = gateway(broker, HOSTILE, protocol=mqtt.MQTTv311)
        assert old.connected() == 0
        assert old.subscribe("$share/ingest/sc/v1/+/telemetry") == [V311_SUBSCRIBE_FAILURE]
        # So the share group's only member gets every message.
        sent = [f"m{i}".encode() for i in range(40)]
        for payload in sent:
            assert honest.publish("sc/v1/gw-honest/telemetry", payload) == 0
        member.wait(lambda: len(member.messages) >= len(sent))
        assert [p for _t, p in member.messages] == sent
    finally:
        for client in (old, hostile, honest, member):
            if client is not None:
                client.close()


def test_a_gateway_cannot_subscribe_to_other_gateways_or_the_broker(
    broker: ShippedBroker,
) -> None:
    hostile = gateway(broker, HOSTILE)
    try:
        assert hostile.connected() == 0
        for topic in (
            "sc/v1/gw-honest/cmd",
            "sc/v1/gw-honest/config/desired",
            "sc/v1/gw-honest/telemetry",
            "sc/v1/+/cmd",
            "sc/v1/+/config/desired",
            "sc/v1/+/telemetry",
            "sc/v1/gw-hostile/telemetry",   # not even its own uplink: it has no need to
            "sc/v1/_sys/#",
            "sc/#",
            "#",
            "$SYS/#",
            "$CONTROL/dynamic-security/#",
        ):
            assert hostile.subscribe(topic) == [NOT_AUTHORIZED], topic
        assert hostile.subscribe("sc/v1/gw-hostile/cmd") == [1]
        assert hostile.subscribe("sc/v1/gw-hostile/config/desired") == [1]
    finally:
        hostile.close()


def test_a_gateway_can_connect_only_with_its_own_client_id(broker: ShippedBroker) -> None:
    ingest = Client(broker, "_ingest-0")
    honest = gateway(broker, HONEST)
    try:
        assert ingest.connected() == 0
        assert honest.connected() == 0
        for client_id in ("ingest-0", "ingest-1", "api-1", "edge-gw-honest", "gw-hostile",
                          "edge-gw-hostile-2", ""):
            for expiry in (0, 3600):
                attempt = gateway(broker, HOSTILE, client_id=client_id, session_expiry=expiry)
                try:
                    assert attempt.connected() == NOT_AUTHORIZED, client_id
                finally:
                    attempt.close()
        attempt = gateway(broker, HOSTILE, client_id="ingest-0", protocol=mqtt.MQTTv311)
        try:
            assert attempt.connected() == V311_NOT_AUTHORIZED
        finally:
            attempt.close()
        # Nobody was taken over.
        time.sleep(0.3)
        assert ingest.disconnects == 0
        assert honest.disconnects == 0
        own = gateway(broker, HOSTILE)
        try:
            assert own.connected() == 0
        finally:
            own.close()
    finally:
        honest.close()
        ingest.close()


def test_a_gateway_cannot_publish_for_others_or_administer_the_broker(
    broker: ShippedBroker,
) -> None:
    hostile = gateway(broker, HOSTILE)
    try:
        assert hostile.connected() == 0
        for topic in (
            "sc/v1/gw-honest/telemetry",
            "sc/v1/gw-honest/status",
            "sc/v1/gw-honest/health",
            "sc/v1/gw-honest/config/reported",
            "sc/v1/gw-honest/cmd/response/api-1",
            "sc/v1/gw-honest/cmd",
            "sc/v1/gw-honest/config/desired",
            "sc/v1/gw-hostile/cmd",              # commands come from the platform only
            "sc/v1/gw-hostile/config/desired",
            "sc/v1/_sys/deadletter/ingest",
            "$SYS/broker/uptime",
        ):
            assert hostile.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        # The plugin's admin topic: a gateway cannot create itself a user.
        command = (b'{"commands":[{"command":"createClient","username":"evil",'
                   b'"password":"evil","clientid":"ingest-0"}]}')
        assert hostile.publish("$CONTROL/dynamic-security/v1", command) == NOT_AUTHORIZED
    finally:
        hostile.close()
    evil = Client(broker, "evil", "evil", client_id="ingest-0")
    try:
        assert evil.connected() == NOT_AUTHORIZED
    finally:
        evil.close()


def _batch(seq: int, base_ts: int) -> bytes:
    return encode_batch(Batch(gateway=HONEST, seq=seq, readings=[
        Reading(device=f"loop-{i}", measurement=MEASUREMENT, ts=base_ts + seq * 1000 + i,
                fields={"intensity": float(i)}, tags={"lane": "1"})
        for i in range(PER_BATCH)
    ]))


def _stored(influxd: Any, db: str) -> tuple[int, int]:
    """(distinct batch seqs, readings) InfluxDB holds for the honest gateway."""
    def scalar(query: str) -> int:
        series = influxd.query(query, db=db)["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    where = f"WHERE \"gateway\" = '{HONEST}'"
    return (scalar(f'SELECT count(distinct("seq")) FROM "ingest_batch" {where}'),
            scalar(f'SELECT count("intensity") FROM "{MEASUREMENT}" {where}'))


def test_a_hijacker_makes_ingest_lose_no_honest_batch(
    broker: ShippedBroker, influxd: Any, influx_db: str, tmp_path: Path
) -> None:
    """An honest gateway publishes 200 batches to a real ingest worker (`ingest-0`, its own
    process) while a hostile gateway tries to join the share group (online and offline) and
    to take over the worker's session while the worker is down with 100 batches queued."""
    base_ts = (time.time_ns() // 10**9 - 3600) * 10**9
    worker = IngestProcess(broker, influxd.url, influx_db, tmp_path, client_id="ingest-0")
    honest = gateway(broker, HONEST)
    try:
        assert honest.connected() == 0
        worker.start()
        # PUBACK 0 (not 0x10, "no matching subscribers") once the worker's subscription is
        # in place; a batch sent again overwrites itself.
        wait_until(lambda: honest.publish("sc/v1/gw-honest/telemetry", _batch(0, base_ts)) == 0,
                   30, "the worker's subscription")

        # Attack 1, online and offline: join ingest's share group.
        hostile = gateway(broker, HOSTILE, session_expiry=3600)
        try:
            assert hostile.connected() == 0
            assert hostile.subscribe("$share/ingest/sc/v1/+/telemetry") == [NOT_AUTHORIZED]
            for n in range(3):  # more offline sessions need more client ids: refused
                extra = gateway(broker, HOSTILE, client_id=f"edge-gw-hostile-{n}",
                                session_expiry=3600)
                try:
                    assert extra.connected() == NOT_AUTHORIZED
                finally:
                    extra.close()
            for seq in range(100):
                assert honest.publish("sc/v1/gw-honest/telemetry", _batch(seq, base_ts)) == 0
        finally:
            hostile.close()  # its session stays, offline
        wait_until(lambda: _stored(influxd, influx_db) == (100, 100 * PER_BATCH), 60,
                   "the first 100 batches in InfluxDB")

        # Attack 2: the worker is down, its session holds what arrives meanwhile.
        worker.stop()
        for seq in range(100, 200):
            assert honest.publish("sc/v1/gw-honest/telemetry", _batch(seq, base_ts)) == 0
        for expiry in (0, 3600):
            thief = gateway(broker, HOSTILE, client_id="ingest-0", session_expiry=expiry)
            try:
                assert thief.connected() == NOT_AUTHORIZED
            finally:
                thief.close()
        thief = gateway(broker, HOSTILE, client_id="ingest-0", protocol=mqtt.MQTTv311)
        try:
            assert thief.connected() == V311_NOT_AUTHORIZED
        finally:
            thief.close()
        hostile = gateway(broker, HOSTILE, session_expiry=3600)
        try:
            assert hostile.connected() == 0
            assert hostile.subscribe("$share/ingest/sc/v1/+/telemetry") == [NOT_AUTHORIZED]
        finally:
            hostile.close()

        worker.start()  # the same id: its session, with the 100 queued batches
        wait_until(lambda: _stored(influxd, influx_db) == (200, 200 * PER_BATCH), 60,
                   "all 200 batches in InfluxDB")
    finally:
        honest.close()
        worker.stop()
    assert _stored(influxd, influx_db) == (200, 200 * PER_BATCH)


# -- the client-certificate listener ---------------------------------------------------------


def test_a_gateway_certificate_is_that_gateway_only(
    broker: ShippedBroker,
) -> None:
    """On the certificate listener mosquitto 2.0 skips the password check and with it the
    plugin's client-id pin; use_username_as_clientid makes the certificate's CN the client id,
    so a gateway's certificate can neither take ingest's session nor act for another gateway,
    and the plugin's rights for its CN apply as with a password."""
    from tests.tls_helpers import issue_client_cert

    pki = broker.pki
    honest_cert = issue_client_cert(pki, HONEST)
    hostile_cert = issue_client_cert(pki, HOSTILE)
    member = Client(broker, "_ingest-0")  # the worker, on its listener
    honest = Client(broker, None, tls=False, client_id="edge-gw-honest",
                    certificate=honest_cert)
    hijacker: Client | None = None
    try:
        assert member.connected() == 0
        assert member.subscribe("$share/ingest/sc/v1/+/telemetry") == [1]
        assert honest.connected() == 0
        # Ingest's client id through a gateway certificate: renamed to the CN, so the
        # worker's connection and session are untouched.
        hijacker = Client(broker, None, tls=False, client_id="ingest-0",
                          certificate=hostile_cert)
        assert hijacker.connected() == 0
        assert hijacker.session_present is False
        time.sleep(0.5)
        assert member.disconnects == 0
        for topic in ("$share/ingest/sc/v1/+/telemetry", "sc/v1/gw-honest/cmd",
                      "sc/v1/+/telemetry", "#", "$CONTROL/dynamic-security/#"):
            assert hijacker.subscribe(topic) == [NOT_AUTHORIZED], topic
        assert hijacker.subscribe("sc/v1/gw-hostile/cmd") == [1]
        assert hijacker.publish("sc/v1/gw-honest/telemetry", b"forged") == NOT_AUTHORIZED
        assert hijacker.publish("sc/v1/gw-hostile/telemetry", b"own") == 0
        # The honest gateway's certificate works end to end.
        sent = [f"c{i}".encode() for i in range(20)]
        for payload in sent:
            assert honest.publish("sc/v1/gw-honest/telemetry", payload) == 0
        member.wait(lambda: len(member.messages) >= len(sent) + 1)
        assert [p for t, p in member.messages if t.endswith("gw-honest/telemetry")] == sent
        assert member.disconnects == 0
    finally:
        for client in (hijacker, honest, member):
            if client is not None:
                client.close()


def test_certificates_of_another_ca_or_of_no_provisioned_gateway_get_nothing(
    broker: ShippedBroker,
) -> None:
    from tests.tls_helpers import issue_client_cert

    # Signed by another CA, with an honest gateway's CN: the TLS handshake fails (with TLS
    # 1.3 the broker says so after it), no CONNACK ever comes.
    cert, key = issue_client_cert(broker.pki, HONEST, rogue=True)
    ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
    ctx.load_cert_chain(str(cert), str(key))
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 1]) + b"x"
    with (socket.create_connection(("127.0.0.1", broker.cert_port), timeout=10) as raw,
          ctx.wrap_socket(raw, server_hostname="localhost") as tls):
        answer = b""
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            tls.sendall(connect)
            answer = tls.recv(4)
        assert answer == b""  # no CONNACK (0x20 ...): refused before MQTT
    # A CN the plugin does not know connects (mosquitto skips authentication) but may
    # neither read nor write anything: the plugin's default access denies it.
    stranger = Client(broker, None, tls=False, client_id="x",
                      certificate=issue_client_cert(broker.pki, "gw-unknown"))
    try:
        assert stranger.connected() == 0
        assert stranger.subscribe("sc/v1/gw-unknown/cmd") == [NOT_AUTHORIZED]
        assert stranger.publish("sc/v1/gw-unknown/telemetry", b"x") == NOT_AUTHORIZED
    finally:
        stranger.close()
