"""The ledger check against an InfluxDB serving HTTPS (a real influxd with a throwaway CA).

A simulated fleet publishes to a real mosquitto, a real ingest worker writes over HTTPS,
and ``compare_with_influx`` through ``InfluxHttp(ca_file=...)`` finds every reading; the
wrong CA is a :class:`LedgerError` saying the certificate did not verify; bad arguments are
refused with the argument named.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sim_helpers as h

from foundation import InfluxQueryError
from simulators import FleetConfig, GatewayFleet, InfluxHttp, LedgerError, compare_with_influx
from smartcity._localstack import Influxd, Mosquitto
from tests.tls_helpers import MutualTlsProxy, Pki

pytestmark = pytest.mark.integration


def test_ledger_check_over_https_finds_every_reading(
    mosquitto_factory: Callable[..., Mosquitto], influxd_https: Influxd, pki: Pki,
    topic_root: str,
) -> None:
    from ingest import WorkerThread, load_config

    broker = mosquitto_factory()
    database = f"sim_{uuid.uuid4().hex[:12]}"
    config = load_config(
        None,
        {
            "mqtt": {"port": broker.port, "topic_root": topic_root, "keepalive": 10,
                     "client_id": f"ingest-{uuid.uuid4().hex[:6]}"},
            "influx": {"url": influxd_https.url, "database": database, "ca_file": str(pki.ca)},
            "batch": {"max_age": 0.05},
        },
    )  # fmt: skip
    fleet = GatewayFleet(
        FleetConfig(
            scenario=h.scenario(), host=broker.host, port=broker.port, topic_root=topic_root,
            client_prefix=f"sim{uuid.uuid4().hex[:6]}",
        )
    )  # fmt: skip
    influx = InfluxHttp(influxd_https.url, ca_file=pki.ca)
    try:
        with WorkerThread(config):
            fleet.run(ticks=5)
            assert fleet.ledger.readings == fleet.ledger.created_readings > 0
            deadline = time.monotonic() + 30
            while compare_with_influx(fleet.ledger, influx, database).stored < (
                fleet.ledger.readings
            ) and time.monotonic() < deadline:
                time.sleep(0.1)
        report = compare_with_influx(fleet.ledger, influx, database)
        assert report.summary() == {
            "gateways": fleet.layout.gateways,
            "expected": fleet.ledger.readings,
            "stored": fleet.ledger.readings,
            "lost": 0,
            "extra": 0,
            "missing_seqs": 0,
        }
        # The wrong CA, or the system store for a private CA: refused, saying why.
        for wrong in (InfluxHttp(influxd_https.url, ca_file=pki.rogue_ca),
                      InfluxHttp(influxd_https.url)):  # fmt: skip
            with pytest.raises(LedgerError, match="CERTIFICATE_VERIFY_FAILED"):
                compare_with_influx(fleet.ledger, wrong, database)
    finally:
        influxd_https.drop_database(database)


def test_influx_http_refusals(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(LedgerError, match=re.escape(f"ca_file: file not found: {tmp_path}")):
        InfluxHttp("https://127.0.0.1:8086", ca_file=tmp_path / "nope.pem")
    with pytest.raises(LedgerError, match="need an https:// url"):
        InfluxHttp("http://127.0.0.1:8086", ca_file=pki.ca)
    with pytest.raises(LedgerError, match="cert_file and key_file go together"):
        InfluxHttp("https://127.0.0.1:8086", cert_file=pki.client_cert)
    remote = "http://influx.city.example:8086"
    with pytest.raises(LedgerError, match=r"credentials over plain http to a remote InfluxDB"):
        InfluxHttp(remote, username="sim", password="pw")
    InfluxHttp(remote, username="sim", password="pw", allow_insecure=True)
    InfluxHttp("http://127.0.0.1:8086", username="sim", password="pw")
    InfluxHttp("https://influx.city.example:8086", username="sim", password="pw")


def test_influx_http_presents_a_client_certificate_to_a_proxy_that_requires_one(
    influxd: Influxd, pki: Pki
) -> None:
    with MutualTlsProxy(pki, (influxd.host, influxd.port)) as proxy:
        with pytest.raises(InfluxQueryError):
            InfluxHttp(proxy.url, ca_file=pki.ca).query("SHOW DATABASES")
        assert proxy.accepted == 0
        client = InfluxHttp(
            proxy.url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key
        )
        assert client.query("SHOW DATABASES")["results"][0]["series"][0]["name"] == "databases"
