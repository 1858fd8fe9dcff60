"""The ``mqtt`` settings block and its deprecated flat aliases: every source maps onto the
same model, the sources keep their priority, and no file is opened when parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from api import ApiSettings, ConfigError, load_settings
from foundation import BrokerTls


def test_every_source_fills_the_same_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "api.yaml"
    config.write_text("mqtt:\n  host: from-file\n  port: 1001\nmqtt_username: legacy-file\n")
    s = load_settings(config)
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username) == ("from-file", 1001, "legacy-file")
    # The environment beats the file; the nested spelling beats the flat one.
    monkeypatch.setenv("SMARTCITY_API_MQTT_PORT", "1002")
    assert load_settings(config).mqtt.port == 1002
    monkeypatch.setenv("SMARTCITY_API_MQTT__PORT", "1003")
    assert load_settings(config).mqtt.port == 1003
    # Flags (keywords) beat both, flat or nested.
    assert load_settings(config, mqtt_port=1004).mqtt.port == 1004
    assert load_settings(config, mqtt={"port": 1005}).mqtt.port == 1005
    # Nested blocks from different sources merge key by key.
    monkeypatch.setenv("SMARTCITY_API_MQTT__TLS__CA_FILE", str(tmp_path / "ca.pem"))
    s = load_settings(config, mqtt={"tls": {"cert_file": "c.pem", "key_file": "k.pem"}})
    assert s.mqtt.tls == BrokerTls(
        ca_file=tmp_path / "ca.pem", cert_file=Path("c.pem"), key_file=Path("k.pem")
    )
    assert s.mqtt.host == "from-file"


def test_flat_aliases_keep_their_old_meaning() -> None:
    assert ApiSettings(mqtt_tls=False, mqtt_tls_insecure=False).mqtt.tls is None
    assert ApiSettings(mqtt_tls="true").mqtt.tls == BrokerTls()
    assert ApiSettings(mqtt_tls_ca_file=None).mqtt.tls is None
    s = ApiSettings(mqtt_client_id="api-7", mqtt_connect_timeout_s=2, mqtt_inbox=500)
    assert (s.mqtt.client_id, s.mqtt.connect_timeout_s, s.mqtt.max_buffered) == ("api-7", 2, 500)
    assert (s.mqtt_client_id, s.mqtt_host, s.mqtt_port) == ("api-7", "127.0.0.1", 1883)
    with pytest.raises(ConfigError, match="mqtt_tls: must be true or false"):
        load_settings(mqtt_tls="maybe")
    with pytest.raises(ConfigError, match=r"mqtt_client_id is a deprecated alias of mqtt\.cl"):
        load_settings(mqtt_client_id="a", mqtt={"client_id": "b"})
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_settings(mqtt_port=0)


def test_parsing_opens_no_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    s = load_settings(
        mqtt={"username": "api", "password_file": missing,
              "tls": {"ca_file": missing, "cert_file": missing, "key_file": missing}},
        influx_url="https://127.0.0.1:8086", influx_ca_file=missing,
    )
    assert s.mqtt.password_file == missing
