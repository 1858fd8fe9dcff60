"""TLS and username/password towards a real mosquitto (certificates from ``tests.tls_helpers``)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from ingest_testkit import batch_payload, count_points, make_config, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from ingest import BrokerError, WorkerThread
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Topics
from tests.tls_helpers import make_pki, password_file

pytestmark = pytest.mark.integration

USER, PASSWORD = "ingest", "s3cret-pw"


@pytest.fixture
def tls_broker(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> tuple[Mosquitto, Path]:
    """A private mosquitto with a TLS listener (CA-signed cert for 127.0.0.1), password file."""
    pki = make_pki(tmp_path / "pki")
    broker = mosquitto_factory(
        password_file=password_file(tmp_path / "passwd", {USER: PASSWORD}),
        tls=pki.mosquitto_tls(),
    )
    return broker, pki.ca


def test_worker_over_tls_with_a_password_stores_everything(
    tls_broker: tuple[Mosquitto, Path], influxd: Influxd, influx_db: str, topic_root: str,
    base_ts: int,
) -> None:
    broker, ca = tls_broker
    config = make_config(
        broker, influxd, topic_root, influx_db,
        mqtt={"port": broker.tls_port, "username": USER, "password": PASSWORD,
              "tls": {"ca_file": str(ca)}},
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.username_pw_set(USER, PASSWORD)
    pub.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    with WorkerThread(config) as running:
        pub.connect(broker.host, broker.tls_port)
        pub.loop_start()
        try:
            infos = [
                pub.publish(Topics(topic_root).telemetry("gw-t"),
                            batch_payload("gw-t", 0, seq, 25, base_ts), qos=1)
                for seq in range(8)
            ]
            for info in infos:
                info.wait_for_publish(10)
        finally:
            pub.disconnect()
            pub.loop_stop()
        wait_for(lambda: count_points(influxd, influx_db) >= 200, 20, "points over TLS")
        wait_for(lambda: running.worker.stats().messages_in_flight == 0, 10, "acks")
    assert count_points(influxd, influx_db) == 200


def test_a_wrong_password_fails_the_worker_at_start(
    tls_broker: tuple[Mosquitto, Path], influxd: Influxd, influx_db: str, topic_root: str,
) -> None:
    broker, ca = tls_broker
    config = make_config(
        broker, influxd, topic_root, influx_db,
        mqtt={"port": broker.tls_port, "username": USER, "password": "wrong",
              "tls": {"ca_file": str(ca)}},
    )
    with pytest.raises(BrokerError, match="refused"):
        WorkerThread(config).start(timeout=60)
