"""``foundation._broker``: the one TLS and credentials model every MQTT client uses, its rules,
and how each service's config refuses the same things with its own key names."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from api import ApiSettings
from foundation import (
    BrokerAccess,
    BrokerSetupError,
    BrokerTls,
    check_broker_security,
    configure_client,
    is_loopback,
)
from ingest import ConfigError as IngestConfigError
from ingest import load_config as load_ingest_config
from simulators import BrokerError, FleetConfig, GatewayFleet
from tests.tls_helpers import Pki


def _check(**kwargs: Any) -> None:
    values: dict[str, Any] = {
        "host": "mqtt.city.example", "tls": None, "has_password": False, "allow_insecure": False,
    }  # fmt: skip
    check_broker_security(**(values | kwargs))


# -- the rules ----------------------------------------------------------------------------------


def test_insecure_tls_is_refused_without_allow_insecure() -> None:
    with pytest.raises(ValueError, match=r"^tls.insecure needs allow_insecure: true"):
        _check(tls=BrokerTls(insecure=True))
    _check(tls=BrokerTls(insecure=True), allow_insecure=True)


def test_a_password_over_plain_tcp_to_a_remote_broker_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"password over plain TCP to a remote broker \(mqtt.city.example\) is refused: "
        r"configure tls",
    ):
        _check(has_password=True)
    _check(has_password=True, tls=BrokerTls())  # with TLS
    _check(has_password=True, allow_insecure=True)  # development
    for local in ("127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"):
        _check(host=local, has_password=True)  # loopback never leaves the machine
    _check()  # no password: nothing to leak


def test_rule_messages_use_the_services_key_names() -> None:
    with pytest.raises(ValueError, match=r"^mqtt_tls_insecure needs mqtt_allow_insecure: true"):
        _check(tls=BrokerTls(insecure=True), tls_key="mqtt_tls",
               insecure_key="mqtt_tls_insecure", allow_key="mqtt_allow_insecure")  # fmt: skip


def test_is_loopback() -> None:
    assert is_loopback("LOCALHOST")
    assert is_loopback("127.3.2.1")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("broker.local")


# -- the models ---------------------------------------------------------------------------------


def test_cert_and_key_go_together_and_unknown_keys_are_refused(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        BrokerTls(cert_file=pki.client_cert)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BrokerTls.model_validate({"ca": str(pki.ca)})
    with pytest.raises(ValidationError, match="set password or password_file, not both"):
        BrokerAccess.model_validate({"password": "x", "password_file": "/run/secret"})


def test_a_missing_ca_file_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    tls = BrokerTls(ca_file=missing)  # parsing does not touch the file system
    with pytest.raises(BrokerSetupError, match=rf"^broker.tls.ca_file: file not found: {missing}$"):
        tls.ssl_context("broker.tls.")
    with pytest.raises(BrokerSetupError) as err:
        BrokerTls(ca_file=tmp_path).ssl_context()
    assert (err.value.key, err.value.reason) == ("tls.ca_file", f"is not a file: {tmp_path}")


def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(BrokerSetupError, match=rf"^tls.ca_file: not a usable CA bundle: {junk}"):
        BrokerTls(ca_file=junk).ssl_context()
    with pytest.raises(BrokerSetupError, match=r"^tls.cert_file: cannot load the client cert"):
        BrokerTls(ca_file=pki.ca, cert_file=junk, key_file=pki.client_key).ssl_context()


def test_ssl_context_verifies_and_checks_hostnames_unless_insecure(pki: Pki) -> None:
    ctx = BrokerTls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    strict = ctx.ssl_context()
    assert strict.verify_mode == ssl.CERT_REQUIRED
    assert strict.check_hostname
    loose = BrokerTls(ca_file=pki.ca, insecure=True).ssl_context()
    assert loose.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified
    assert not loose.check_hostname


def test_password_file_is_read_at_connect_with_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    access = BrokerAccess(username="gw", password_file=secret)
    with pytest.raises(BrokerSetupError, match=rf"^broker.password_file: cannot read {secret}"):
        access.read_password("broker.password_file")
    secret.write_text("s3cret\nignored second line\n")
    assert access.read_password() == "s3cret"
    assert BrokerAccess(username="gw", password="pw").read_password() == "pw"
    assert BrokerAccess().read_password() is None


def test_configure_client_applies_tls_and_credentials(pki: Pki) -> None:
    access = BrokerAccess(
        username="gw", password="pw", tls=BrokerTls(ca_file=pki.ca, insecure=True)
    )
    ctx = access.tls.ssl_context() if access.tls else None
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    configure_client(client, access, context=ctx)
    assert client._ssl_context is ctx  # built once, shared by every client of a service
    assert client._tls_insecure
    assert (client._username, client._password) == (b"gw", b"pw")
    plain = mqtt.Client(CallbackAPIVersion.VERSION2)
    configure_client(plain, BrokerAccess())
    assert plain._ssl_context is None
    assert plain._username is None


def test_the_module_imports_no_server_package() -> None:
    code = (
        "import sys, foundation._broker\n"
        "server = {'fastapi', 'uvicorn', 'starlette', 'httpx', 'sqlalchemy', 'pydantic_settings',"
        " 'influxdb_client', 'numpy', 'yaml'}\n"
        "print(sorted(server & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


# -- every service refuses the same things, with its own key names ----------------------------


def test_ingest_config_applies_the_rules() -> None:
    with pytest.raises(IngestConfigError, match=r"mqtt\.tls\.insecure needs allow_insecure"):
        load_ingest_config(None, {"mqtt": {"tls": {"insecure": True}}})
    with pytest.raises(IngestConfigError, match="password over plain TCP to a remote broker"):
        load_ingest_config(None, {"mqtt": {"host": "10.1.2.3", "username": "u", "password": "p"}})
    cfg = load_ingest_config(None, {"mqtt": {"username": "u", "password_file": "/run/s"}})
    assert cfg.mqtt.password_file == Path("/run/s")


def test_api_settings_apply_the_rules(tmp_path: Path, pki: Pki) -> None:
    """The API's ``mqtt`` block is the shared model with the shared rules; files are judged
    when the connection is prepared (start-up, ``api check-config``), not when parsed; the
    flat ``mqtt_*`` keys are deprecated aliases of the nested ones."""
    from api import ConfigError as ApiConfigError
    from api import MqttSettings
    from api.state import prepare_broker

    with pytest.raises(ValidationError, match=r"mqtt\.tls\.insecure needs mqtt\.allow_insecure"):
        ApiSettings(mqtt={"tls": {"insecure": True}})
    with pytest.raises(ValidationError, match="password over plain TCP to a remote broker"):
        ApiSettings(mqtt={"host": "10.1.2.3", "username": "api", "password": "pw"})
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        ApiSettings(mqtt={"tls": {"cert_file": pki.client_cert}})
    with pytest.raises(ValidationError, match="set password or password_file, not both"):
        ApiSettings(mqtt={"password": "pw", "password_file": tmp_path / "pw"})
    # A missing file parses; preparing the connection names the key and the file.
    missing = tmp_path / "missing-ca.pem"
    settings = ApiSettings(mqtt={"tls": {"ca_file": missing}})
    assert isinstance(settings.mqtt, MqttSettings)
    with pytest.raises(ApiConfigError, match=f"mqtt.tls.ca_file: file not found: {missing}"):
        prepare_broker(settings.mqtt)
    unreadable = ApiSettings(mqtt={"username": "api", "password_file": tmp_path / "no-pw"})
    with pytest.raises(ApiConfigError, match=r"mqtt\.password_file: cannot read"):
        prepare_broker(unreadable.mqtt)
    settings = ApiSettings(
        mqtt={"host": "10.1.2.3", "username": "api", "password": "pw", "tls": {"ca_file": pki.ca}}
    )
    assert settings.mqtt.tls == BrokerTls(ca_file=pki.ca)
    assert settings.mqtt.username == "api"
    assert isinstance(prepare_broker(settings.mqtt), ssl.SSLContext)
    assert ApiSettings(mqtt={"tls": {}}).mqtt.tls == BrokerTls()  # system CA store
    # The deprecated flat keys land on the same model, with the same rules.
    legacy = ApiSettings(
        mqtt_host="10.1.2.3", mqtt_username="api", mqtt_password="pw", mqtt_tls_ca_file=pki.ca
    )
    assert legacy.mqtt == settings.mqtt.model_copy(update={"client_id": legacy.mqtt.client_id})
    assert (legacy.mqtt_host, legacy.mqtt_username) == ("10.1.2.3", "api")
    assert ApiSettings(mqtt_tls=True).mqtt.tls == BrokerTls()
    with pytest.raises(ValidationError, match=r"mqtt\.tls\.insecure needs mqtt\.allow_insecure"):
        ApiSettings(mqtt_tls_insecure=True)
    with pytest.raises(ValueError, match=r"mqtt_port is a deprecated alias of mqtt\.port"):
        ApiSettings(mqtt_port=1884, mqtt={"port": 1885})


def test_simulated_fleet_applies_the_rules(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"tls\.insecure needs allow_insecure"):
        GatewayFleet(FleetConfig(gateways=1, tls=BrokerTls(insecure=True)))
    with pytest.raises(BrokerError, match="password over plain TCP to a remote broker"):
        GatewayFleet(FleetConfig(gateways=1, host="10.1.2.3", username="u", password="p"))
    fleet = GatewayFleet(FleetConfig(gateways=1, tls=BrokerTls(ca_file=tmp_path / "no.pem")))
    with pytest.raises(BrokerError, match=r"tls\.ca_file: file not found"):
        fleet.run(ticks=1)


def test_sim_run_refuses_bad_tls_options_before_connecting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from simulators.cli import app as sim_cli

    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(sim_cli, ["run", "-s", "small", "--duration", "1", *args])
        return result.exit_code, result.output

    code, out = run("--broker", "mqtts://127.0.0.1:1", "--insecure")
    assert code == 2
    assert "tls.insecure needs allow_insecure" in out
    code, out = run("--broker", "mqtts://127.0.0.1:1", "--cert", str(tmp_path / "c.pem"))
    assert code == 2
    assert "--cert and --key go together" in out
    code, out = run("--broker", "mqtt://10.1.2.3:1883", "--username", "u", "--password", "p")
    assert code == 2
    assert "password over plain TCP to a remote broker (10.1.2.3) is refused" in out
    code, out = run("--broker", "mqtts://127.0.0.1:1", "--ca-file", str(tmp_path / "ca.pem"))
    assert code == 1
    assert f"tls.ca_file: file not found: {tmp_path / 'ca.pem'}" in out
