"""The API reading an InfluxDB that serves HTTPS (a real influxd with a throwaway CA).

- ``InfluxClient`` built from the ``influx_*`` settings verifies the server against
  ``influx_ca_file``: history queries and ``/ping`` answer; the wrong CA (or the system store
  for a private CA) is a 503-style :class:`UpstreamUnavailable` and a log line naming the CA.
- The whole API (warm-up at start, ``/v1/history``, ``/readyz``) over HTTPS.
- Settings refusals: a missing CA file named, TLS files with an http URL, a password over
  plain http to a remote InfluxDB; the CLI exits 2 with the setting named.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import start_stack
from typer.testing import CliRunner

from api import ApiSettings
from api._errors import ConfigError, UpstreamUnavailable
from api._settings import load_settings
from api.cli import app as api_cli
from api.storage import InfluxClient
from smartcity._localstack import Influxd, Mosquitto
from tests.tls_helpers import MutualTlsProxy, Pki

pytestmark = pytest.mark.integration

_MIN = 60 * 10**9


@pytest.fixture
def https_db(influxd_https: Influxd) -> Iterator[str]:
    """A database with two hours of minute readings and a recent one, ending an hour ago."""
    name = f"api_{uuid.uuid4().hex[:12]}"
    influxd_https.create_database(name)
    start = (time.time_ns() // (3600 * 10**9) - 3) * 3600 * 10**9
    lines = [
        f'AirQualityObserved,device=aq-tls,gateway=tls-gw pm25={i % 10}.5,quality="good" '
        f"{start + i * _MIN}"
        for i in range(120)
    ]
    lines.append(
        f"TrafficFlowObserved,device=loop-tls,gateway=tls-gw,lane=1 intensity=480,"
        f'averageVehicleSpeed=41.5,quality="good" {time.time_ns() - 60 * 10**9}'
    )
    influxd_https.write(name, "\n".join(lines).encode())
    yield name
    influxd_https.drop_database(name)


def _settings(influxd: Influxd, database: str, **overrides: object) -> ApiSettings:
    return ApiSettings(influx_url=influxd.url, influx_database=database, **overrides)  # type: ignore[arg-type]


def test_influx_client_reads_over_https_verifying_the_private_ca(
    influxd_https: Influxd, https_db: str, pki: Pki
) -> None:
    async def read() -> tuple[bool, int]:
        settings = _settings(influxd_https, https_db, influx_ca_file=pki.ca)
        async with InfluxClient.from_settings(settings) as client:
            (series,) = await client.query(
                'SELECT count("pm25") FROM "AirQualityObserved" WHERE "device" = \'aq-tls\''
            )
            return await client.ping(), int(series.values[0][1])

    assert asyncio.run(read()) == (True, 120)


@pytest.mark.parametrize("ca", ["rogue", "system"])
def test_influx_client_with_the_wrong_ca_is_unavailable_and_says_why(
    influxd_https: Influxd, https_db: str, pki: Pki, ca: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.influx")
    overrides = {"influx_ca_file": pki.rogue_ca} if ca == "rogue" else {}

    async def read() -> bool:
        async with InfluxClient.from_settings(
            _settings(influxd_https, https_db, **overrides)
        ) as client:
            with pytest.raises(UpstreamUnavailable):
                await client.query('SELECT count("pm25") FROM "AirQualityObserved"')
            return await client.ping()

    assert asyncio.run(read()) is False
    (record,) = [
        r for r in caplog.records if r.getMessage() == "influx certificate does not verify"
    ]
    trust = f"influx_ca_file {pki.rogue_ca}" if ca == "rogue" else "the system CA store"
    assert record.trust == trust  # type: ignore[attr-defined]
    assert record.url == influxd_https.url  # type: ignore[attr-defined]


def test_api_warms_up_and_answers_history_over_https(
    mosquitto: Mosquitto, influxd_https: Influxd, https_db: str, pki: Pki, tmp_path: Path
) -> None:
    stack = start_stack(
        mosquitto, influxd_https, root=f"t{uuid.uuid4().hex[:12]}", database=https_db,
        db_path=tmp_path / "api.sqlite3", influx_ca_file=pki.ca,
    )  # fmt: skip
    try:
        # Warm-up at start read the latest reading of each series over HTTPS.
        assert stack.server.services.warmed >= 2
        (reading,) = stack.get("/v1/live/tls-gw/loop-tls").json()["readings"]
        assert reading["fields"]["intensity"] == 480.0
        start = (time.time_ns() // (3600 * 10**9) - 3) * 3600 * 10**9
        iso = dt.datetime.fromtimestamp(start / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")
        end = dt.datetime.fromtimestamp((start + 120 * _MIN) / 1e9, dt.UTC).isoformat()
        answer = stack.get(
            "/v1/history",
            params={"device": "aq-tls", "measurement": "AirQualityObserved", "field": "pm25",
                    "start": iso, "end": end.replace("+00:00", "Z"), "window": "1h",
                    "aggregate": "count"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert [p["value"] for p in answer.json()["points"]] == [60, 60]
        assert stack.get("/readyz", role=None).status_code == 200
    finally:
        stack.close()


def test_influx_tls_settings_refusals(tmp_path: Path, pki: Pki) -> None:
    https = "https://influx.city.example:8086"
    missing = tmp_path / "influx-ca.pem"
    # Files are judged when the client is prepared (start-up, check-config), not parsed.
    settings = load_settings(influx_url=https, influx_ca_file=missing)
    with pytest.raises(ConfigError, match="influx_ca_file: file not found"):
        InfluxClient.from_settings(settings)
    with pytest.raises(ConfigError, match="influx_ca_file needs an https:// influx_url"):
        load_settings(influx_url="http://127.0.0.1:8086", influx_ca_file=pki.ca)
    with pytest.raises(ConfigError, match="influx_cert_file and influx_key_file go together"):
        load_settings(influx_url=https, influx_cert_file=pki.client_cert)
    remote = "http://influx.city.example:8086"
    with pytest.raises(ConfigError, match=r"credentials over plain http to a remote InfluxDB"):
        load_settings(influx_url=remote, influx_username="api", influx_password="pw")
    # Loopback, https or influx_allow_insecure: accepted.
    load_settings(influx_url="http://127.0.0.1:8086", influx_username="api", influx_password="pw")
    load_settings(influx_url=https, influx_username="api", influx_password="pw")
    load_settings(
        influx_url=remote, influx_username="api", influx_password="pw", influx_allow_insecure=True
    )
    # A CA bundle that is not one: named when the client is built.
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text("hello\n")
    with pytest.raises(ConfigError, match="influx_ca_file: not a usable CA bundle"):
        InfluxClient.from_settings(load_settings(influx_url=https, influx_ca_file=not_a_ca))


def test_cli_names_a_missing_influx_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "influx-ca.pem"
    result = CliRunner().invoke(
        api_cli,
        ["run", "--influx-url", "https://127.0.0.1:8086", "--influx-ca-file", str(missing)],
    )
    assert result.exit_code == 1, result.output
    assert f"influx_ca_file: file not found: {missing}" in result.output
    result = CliRunner().invoke(
        api_cli,
        ["check-config"],
        env={"SMARTCITY_API_INFLUX_URL": "https://127.0.0.1:8086",
             "SMARTCITY_API_INFLUX_CA_FILE": str(missing)},
    )
    assert result.exit_code == 1, result.output
    assert f"influx_ca_file: file not found: {missing}" in result.output


def test_influx_client_presents_a_client_certificate_to_a_proxy_that_requires_one(
    influxd: Influxd, influx_db: str, pki: Pki
) -> None:
    influxd.write(influx_db, b'AirQualityObserved,device=aq-m,gateway=m pm25=3,quality="good" 1')

    async def count(**files: Path) -> int:
        settings = ApiSettings(
            influx_url=proxy.url, influx_database=influx_db, influx_ca_file=pki.ca, **files  # type: ignore[arg-type]
        )
        async with InfluxClient.from_settings(settings) as client:
            (series,) = await client.query('SELECT count("pm25") FROM "AirQualityObserved"')
            return int(series.values[0][1])

    with MutualTlsProxy(pki, (influxd.host, influxd.port)) as proxy:
        with pytest.raises(UpstreamUnavailable):
            asyncio.run(count())
        assert proxy.accepted == 0
        assert asyncio.run(
            count(influx_cert_file=pki.client_cert, influx_key_file=pki.client_key)
        ) == 1
