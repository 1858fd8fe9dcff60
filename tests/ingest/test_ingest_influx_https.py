"""Ingest into an InfluxDB serving HTTPS (a real influxd with a throwaway CA).

- Verified against ``influx.ca_file``: a batch from the real mosquitto is stored, counted
  exactly, and acknowledged.
- The wrong CA (or the system store for a private CA): the worker refuses at start, at once,
  naming the CA; nothing is created or written, nothing is taken from the broker.
- A certificate that stops verifying while the worker runs (the server's certificate replaced
  by one of another CA): writes are retried, never acknowledged, the log says why; the
  right certificate back, the backlog drains exactly.
- Config refusals: a missing CA file named at start, verify off without ``allow_insecure``,
  TLS files with an http URL, credentials over plain http to a remote InfluxDB.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_testkit import Publisher, batch_payload, count_points, make_config, wait_for

from ingest import ConfigError, SchemaError, WorkerThread, load_config
from smartcity._localstack import Influxd, Mosquitto, ServiceError
from tests.tls_helpers import MutualTlsProxy, Pki, make_pki

pytestmark = pytest.mark.integration


def _start(server: Influxd) -> Influxd:
    try:
        server.start()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture
def https_db(influxd_https: Influxd) -> Iterator[str]:
    """A database name for the test (the worker creates it), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    influxd_https.drop_database(name)


def _databases(server: Influxd) -> set[str]:
    answer = server.query("SHOW DATABASES")
    return {row[0] for s in answer["results"][0].get("series", []) for row in s.get("values", [])}


def test_worker_writes_over_https_verifying_the_private_ca(
    mosquitto: Mosquitto, publisher: Publisher, influxd_https: Influxd, https_db: str,
    pki: Pki, topic_root: str, base_ts: int,
) -> None:
    assert influxd_https.url.startswith("https://")
    config = make_config(
        mosquitto, influxd_https, topic_root, https_db, influx={"ca_file": str(pki.ca)}
    )
    with WorkerThread(config) as running:
        for seq in range(8):
            publisher.telemetry("gw-https", batch_payload("gw-https", 0, seq, 25, base_ts))
        publisher.flush()
        wait_for(lambda: count_points(influxd_https, https_db) >= 200, 20, "points over HTTPS")
        wait_for(lambda: running.worker.stats().messages_in_flight == 0, 10, "acks")
        stats = running.worker.stats()
    assert count_points(influxd_https, https_db) == 200
    assert influxd_https.count(https_db, "ingest_batch", "seq") == 8
    assert stats.readings_written == 200
    assert stats.write_retries == 0


@pytest.mark.parametrize("ca", ["rogue", "system"])
def test_a_worker_with_the_wrong_ca_refuses_at_start(
    mosquitto: Mosquitto, influxd_https: Influxd, https_db: str, pki: Pki, topic_root: str,
    ca: str,
) -> None:
    influx = {"ca_file": str(pki.rogue_ca)} if ca == "rogue" else {}
    config = make_config(mosquitto, influxd_https, topic_root, https_db, influx=influx)
    worker = WorkerThread(config)
    started = time.monotonic()
    with pytest.raises(SchemaError) as refused:
        worker.start(timeout=60)
    # At once, not after the start-up retries (3 x influx.timeout = 30 s).
    assert time.monotonic() - started < 10
    message = str(refused.value)
    assert "certificate" in message
    assert influxd_https.url in message
    trust = f"influx.ca_file {pki.rogue_ca}" if ca == "rogue" else "the system CA store"
    assert trust in message
    # It never got as far as the database, let alone the broker.
    assert https_db not in _databases(influxd_https)
    assert not worker.worker.stats().connected
    assert worker.worker.stats().messages_received == 0


def test_a_certificate_that_stops_verifying_is_retried_never_acked_then_drains(
    tmp_path: Path, mosquitto: Mosquitto, publisher: Publisher, pki: Pki, topic_root: str,
    base_ts: int, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest")
    other = make_pki(tmp_path / "other-pki")  # a server certificate from another CA
    server = _start(Influxd(data_dir=tmp_path / "influxd", tls=pki.influxd_tls()))
    try:
        config = make_config(
            mosquitto, server, topic_root, "rotated", influx={"ca_file": str(pki.ca)}
        )
        with WorkerThread(config) as running:
            server.stop()
            server.tls = other.influxd_tls()
            _start(server)
            for seq in range(5):
                publisher.telemetry("gw-rot", batch_payload("gw-rot", 1, seq, 10, base_ts))
            publisher.flush()
            wait_for(lambda: running.worker.stats().write_retries >= 2, 20, "write retries")
            stats = running.worker.stats()
            assert stats.readings_written == 0
            assert stats.messages_in_flight == 5  # received, none acknowledged
            retries = running.worker.metrics.registry.get_sample_value(
                "smartcity_ingest_write_retries_total", {"reason": "connection"}
            )
            assert retries is not None
            assert retries >= 2
            warnings = [
                r for r in caplog.records if r.getMessage() == "write failed, retrying"
            ]
            assert warnings
            error = str(warnings[0].error)  # type: ignore[attr-defined]
            assert f"does not verify against influx.ca_file {pki.ca}" in error
            assert count_points(server, "rotated") == 0
            # The right certificate back: the backlog drains, every point exactly once.
            server.stop()
            server.tls = pki.influxd_tls()
            _start(server)
            wait_for(lambda: running.worker.stats().messages_in_flight == 0, 30, "drain")
        assert count_points(server, "rotated") == 50
    finally:
        server.stop()


def _refusal(overrides: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(None, overrides)
    return str(refused.value)


def test_influx_tls_config_refusals(tmp_path: Path, pki: Pki) -> None:
    https = "https://influx.city.example:8086"
    assert "influx.verify_tls false needs allow_insecure: true" in _refusal(
        {"influx": {"url": https, "verify_tls": False}}
    )
    assert load_config(
        None, {"influx": {"url": https, "verify_tls": False}, "allow_insecure": True}
    ).influx.verify_tls is False
    assert "ca_file has no effect with verify_tls false" in _refusal(
        {"influx": {"url": https, "verify_tls": False, "ca_file": str(pki.ca)},
         "allow_insecure": True}
    )
    assert "ca_file needs an https:// url" in _refusal(
        {"influx": {"url": "http://127.0.0.1:8086", "ca_file": str(pki.ca)}}
    )
    assert "cert_file and key_file go together" in _refusal(
        {"influx": {"url": https, "cert_file": str(pki.client_cert)}}
    )
    for secret in ({"username": "ingest", "password": "pw"}, {"token": "tok"}):
        message = _refusal({"influx": {"url": "http://influx.city.example:8086", **secret}})
        assert "credentials over plain http to a remote InfluxDB (influx.city.example)" in message
        assert "allow_insecure" in message
        # Loopback, https, or allow_insecure: accepted.
        load_config(None, {"influx": {"url": "http://127.0.0.1:8086", **secret}})
        load_config(None, {"influx": {"url": https, **secret}})
        load_config(
            None,
            {"influx": {"url": "http://influx.city.example:8086", **secret},
             "allow_insecure": True},
        )


def test_a_missing_ca_file_is_named_when_the_worker_starts(
    mosquitto: Mosquitto, influxd_https: Influxd, https_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "influx-ca.pem"
    config = make_config(
        mosquitto, influxd_https, topic_root, https_db, influx={"ca_file": str(missing)}
    )
    with pytest.raises(ConfigError, match=re.escape(f"influx.ca_file: file not found: {missing}")):
        WorkerThread(config).start(timeout=60)
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("hello\n")
    config = make_config(
        mosquitto, influxd_https, topic_root, https_db, influx={"ca_file": str(not_a_ca)}
    )
    with pytest.raises(ConfigError, match=r"influx\.ca_file: not a usable CA bundle"):
        WorkerThread(config).start(timeout=60)


def test_a_client_certificate_is_presented_to_a_proxy_that_requires_one(
    mosquitto: Mosquitto, publisher: Publisher, influxd: Influxd, pki: Pki, topic_root: str,
    base_ts: int,
) -> None:
    """influxd 1.x never asks for client certificates: a mutual-TLS proxy in front does."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    with MutualTlsProxy(pki, (influxd.host, influxd.port)) as proxy:
        influx = {"url": proxy.url, "ca_file": str(pki.ca), "timeout": 1.0}
        # Without a client certificate the proxy refuses the handshake (under TLS 1.3 the
        # client only sees the connection closed): the start fails after its retries.
        config = make_config(mosquitto, influxd, topic_root, database, influx=influx)
        with pytest.raises(SchemaError, match=f"InfluxDB at {proxy.url} unreachable"):
            WorkerThread(config).start(timeout=60)
        assert proxy.accepted == 0
        assert database not in _databases(influxd)
        config = make_config(
            mosquitto, influxd, topic_root, database,
            influx={**influx, "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key)},
        )  # fmt: skip
        try:
            with WorkerThread(config) as running:
                for seq in range(4):
                    publisher.telemetry("gw-mtls", batch_payload("gw-mtls", 2, seq, 25, base_ts))
                publisher.flush()
                wait_for(lambda: count_points(influxd, database) >= 100, 20, "points via mTLS")
                wait_for(lambda: running.worker.stats().messages_in_flight == 0, 10, "acks")
            assert count_points(influxd, database) == 100
            assert proxy.accepted >= 1
        finally:
            influxd.drop_database(database)
