"""TLS on both of the API's network hops, against real processes.

- HTTPS: the API serves the configured certificate; a client verifying against the test CA
  gets answers, plain HTTP on the same port gets none, and the URL and start-up log say https.
- Broker: the API's live subscription connects to mosquitto's TLS listener with a client
  certificate and a password file, and receives the telemetry of simulated gateways that
  publish over TLS with their own certificates.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from api_helpers import start_stack, wait_until
from typer.testing import CliRunner

from api.cli import app as api_cli
from foundation import BrokerTls
from simulators import FleetConfig, GatewayFleet
from smartcity._localstack import Influxd, Mosquitto
from tests.tls_helpers import Pki, make_pki, password_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn="api-live")


def test_api_serves_https_with_the_configured_certificate(
    mosquitto: Mosquitto, influxd: Influxd, influx_db: str, pki: Pki, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="api.server")
    stack = start_stack(
        mosquitto, influxd, root=f"t{uuid.uuid4().hex[:12]}", database=influx_db,
        db_path=tmp_path / "api.sqlite3",
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
    )  # fmt: skip
    try:
        host, port = stack.server.settings.host, stack.server.settings.port
        assert stack.url == f"https://{host}:{port}"
        (record,) = [r for r in caplog.records if r.getMessage() == "serving the API"]
        assert record.url == stack.url  # type: ignore[attr-defined]
        # Verified against the test CA: answers, with the key checked as over HTTP.
        ca = ssl.create_default_context(cafile=str(pki.ca))
        with httpx.Client(base_url=stack.url, verify=ca, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            me = client.get("/v1/me", headers={"X-API-Key": stack.keys["viewer"]})
            assert me.status_code == 200
            assert client.get("/v1/me").status_code == 401
        # The certificate served is the configured one.
        served = ssl.get_server_certificate((host, port))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(
            pki.server_cert.read_text()
        )
        # Without the test CA the certificate is not trusted; plain HTTP gets no answer.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{stack.url}/healthz", timeout=10)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{host}:{port}/healthz", timeout=10)
    finally:
        stack.close()


def test_https_settings_are_checked_before_anything_starts(tmp_path: Path, pki: Pki) -> None:
    runner = CliRunner()
    result = runner.invoke(api_cli, ["run", "--tls-cert-file", str(pki.server_cert)])
    assert result.exit_code == 2
    assert "tls_cert_file and tls_key_file go together" in result.output
    missing = tmp_path / "server.key"
    result = runner.invoke(
        api_cli,
        ["run", "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(missing)],
    )
    assert result.exit_code == 2
    assert f"tls_key_file: file not found: {missing}" in result.output


def test_broker_files_are_judged_at_start_up_and_by_check_config(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker certificate or password file that is missing does not make the settings
    invalid (exit 2): preparing the connection fails, at start-up before anything serves and
    in ``check-config`` alike, with exit 1 and the key and the file named."""
    runner = CliRunner()
    ca = tmp_path / "ca.pem"
    result = runner.invoke(api_cli, ["run", "--mqtt-tls-ca-file", str(ca)])
    assert result.exit_code == 1, result.output
    assert f"mqtt.tls.ca_file: file not found: {ca}" in result.output
    config = tmp_path / "api.yaml"
    config.write_text(f"mqtt:\n  username: api\n  password_file: {tmp_path / 'pw'}\n")
    result = runner.invoke(api_cli, ["check-config", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert f"mqtt.password_file: cannot read {tmp_path / 'pw'}" in result.output
    # The deprecated environment spelling is judged the same way, on the same key.
    monkeypatch.setenv("SMARTCITY_API_MQTT_TLS_CA_FILE", str(ca))
    result = runner.invoke(api_cli, ["check-config"])
    assert result.exit_code == 1, result.output
    assert f"mqtt.tls.ca_file: file not found: {ca}" in result.output
    monkeypatch.delenv("SMARTCITY_API_MQTT_TLS_CA_FILE")
    (tmp_path / "pw").write_text("secret\n")
    monkeypatch.setenv("SMARTCITY_API_MQTT__TLS__CA_FILE", str(pki.ca))
    result = runner.invoke(api_cli, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["mqtt"]
    assert shown["tls"]["ca_file"] == str(pki.ca)
    assert (shown["username"], shown["password_file"]) == ("api", str(tmp_path / "pw"))
    # Invalid settings are still refused when parsed (exit 2), with the key.
    result = runner.invoke(api_cli, ["run", "--mqtt-tls-insecure"])
    assert result.exit_code == 2
    assert "mqtt.tls.insecure needs mqtt.allow_insecure" in result.output


def test_live_subscription_over_tls_with_a_client_certificate(
    mosquitto_factory: Callable[..., Mosquitto], influxd: Influxd, influx_db: str, pki: Pki,
    tmp_path: Path,
) -> None:
    broker = mosquitto_factory(
        password_file=password_file(tmp_path / "passwd", {"api": "api-pw", "gw": "gw-pw"}),
        tls=pki.mosquitto_tls(require_certificate=True),
    )
    assert broker.tls_port is not None
    secret = tmp_path / "api.secret"
    secret.write_text("api-pw\n")
    root = f"t{uuid.uuid4().hex[:12]}"
    stack = start_stack(
        broker, influxd, root=root, database=influx_db, db_path=tmp_path / "api.sqlite3",
        mqtt={"port": broker.tls_port, "username": "api", "password_file": secret,
              "tls": {"ca_file": pki.ca, "cert_file": pki.client_cert,
                      "key_file": pki.client_key}},
    )  # fmt: skip
    try:
        wait_until(lambda: stack.server.services.broker.connected, 15)
        fleet = GatewayFleet(
            FleetConfig(
                gateways=3, devices_per_gateway=3, interval_s=1.0, speed=0,
                host="127.0.0.1", port=broker.tls_port, topic_root=root,
                username="gw", password="gw-pw",
                tls=BrokerTls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key),
                client_prefix=f"sim{uuid.uuid4().hex[:6]}",
            )
        )  # fmt: skip
        fleet.run(ticks=5)
        assert fleet.ledger.readings > 0

        def gateways_live() -> set[str]:
            page = stack.get("/v1/live", params={"limit": 1000}).json()
            return {row["gateway"] for row in page["items"]}

        wait_until(lambda: gateways_live() == set(fleet.gateway_ids), 15)
        client_id = stack.server.settings.mqtt.client_id
    finally:
        stack.close()
    # The API logged in with its user name (password from the file) on the TLS listener.
    assert f"as {client_id} (p5, c1, k30, u'api')" in broker.log_path.read_text()
