"""TLS and username/password towards a real mosquitto (certificates made with the openssl CLI)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from ingest_testkit import batch_payload, count_points, make_config, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from ingest import BrokerError, WorkerThread
from smartcity._localstack import Influxd, Mosquitto
from telemetry import Topics

pytestmark = pytest.mark.integration

USER, PASSWORD = "ingest", "s3cret-pw"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> tuple[Mosquitto, Path]:
    """A private mosquitto: TLS-only listener (CA-signed cert for 127.0.0.1), password file."""
    openssl = shutil.which("openssl")
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if openssl is None or not Path(passwd).exists():
        pytest.fail("openssl and mosquitto_passwd are needed: apt-get install openssl mosquitto")
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca_crt = d / "ca.key", d / "ca.pem"
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.pem", d / "san.ext"
    _run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=smartcity test CA", "-keyout", str(ca_key), "-out", str(ca_crt))
    _run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(csr))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run(openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))
    passwords = d / "passwd"
    _run(passwd, "-b", "-c", str(passwords), USER, PASSWORD)
    broker = mosquitto_factory(
        password_file=passwords,
        extra_config=f"cafile {ca_crt}\ncertfile {crt}\nkeyfile {key}\n",
    )
    return broker, ca_crt


def test_worker_over_tls_with_a_password_stores_everything(
    tls_broker: tuple[Mosquitto, Path], influxd: Influxd, influx_db: str, topic_root: str,
    base_ts: int,
) -> None:
    broker, ca = tls_broker
    config = make_config(
        broker, influxd, topic_root, influx_db,
        mqtt={"username": USER, "password": PASSWORD, "tls": {"ca_file": str(ca)}},
    )
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.username_pw_set(USER, PASSWORD)
    pub.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    with WorkerThread(config) as running:
        pub.connect(broker.host, broker.port)
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
        mqtt={"username": USER, "password": "wrong", "tls": {"ca_file": str(ca)}},
    )
    with pytest.raises(BrokerError, match="refused"):
        WorkerThread(config).start(timeout=60)
