"""Pure parts of the cluster profile: the topic-to-subject mapping, the 3.1.1 command form,
and the settings that choose it (edge uplink, ingest source). No processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent import ConfigError as EdgeConfigError
from edge_agent import parse_config
from ingest import ConfigError as IngestConfigError
from ingest import load_config
from ingest._jetstream import consumer_config
from telemetry import (
    ID_RE,
    CommandRequest,
    CommandResponse,
    decode_message,
    encode_message,
    mqtt_to_nats_subject,
    nats_subject_to_mqtt_topic,
    reply_address,
)

_ids = st.from_regex(ID_RE, fullmatch=True)


@given(gw=_ids, client=_ids)
def test_every_contract_id_is_one_subject_token_and_maps_back(gw: str, client: str) -> None:
    topic = f"sc/v1/{gw}/cmd/response/{client}"
    subject = mqtt_to_nats_subject(topic)
    assert subject.split(".")[2] == gw.replace(".", "//")
    assert len(subject.split(".")) == 6
    assert nats_subject_to_mqtt_topic("$MQTT.msgs." + subject) == topic


def test_command_311_form_round_trips_and_v5_properties_win() -> None:
    req = CommandRequest(cmd="ping", reply_to="sc/v1/g/cmd/response/api", correlation="c-1")
    back = decode_message(encode_message(req), CommandRequest)
    assert (back.reply_to, back.correlation) == ("sc/v1/g/cmd/response/api", "c-1")
    # The v5 form stays as it was: no body keys when they are unset.
    assert b"reply_to" not in encode_message(CommandRequest(cmd="ping", args={"a": 1}))
    assert b"correlation" not in encode_message(CommandResponse(ok=True))
    body = reply_address(response_topic=None, correlation_data=None,
                         reply_to=back.reply_to, correlation=back.correlation)
    assert body is not None
    assert body.in_body
    assert body.correlation == b"c-1"
    props = reply_address(response_topic="r", correlation_data=b"x",
                          reply_to="other", correlation="y")
    assert props is not None
    assert not props.in_body
    assert props.topic == "r"
    assert reply_address(response_topic=None, correlation_data=None,
                         reply_to=None, correlation=None) is None


def _edge(tmp_path: Path, gw: str = "gw-1", **broker: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": gw, "state_dir": str(tmp_path)},
        "broker": {"host": "127.0.0.1", "port": 1883, **broker},
    }


def test_edge_uplink_protocol_and_hosts(tmp_path: Path) -> None:
    cfg = parse_config(
        _edge(tmp_path, protocol="mqtt311", hosts=["127.0.0.1:1884", "localhost"]),
        source="test",
    )
    assert cfg.broker.addresses == (("127.0.0.1", 1883), ("127.0.0.1", 1884), ("localhost", 1883))
    assert parse_config(_edge(tmp_path), source="test").broker.protocol == "mqtt5"
    with pytest.raises(EdgeConfigError, match="'//'"):
        parse_config(_edge(tmp_path, "bus.42", protocol="mqtt311"), source="test")
    parse_config(_edge(tmp_path, "bus.42"), source="test")  # mqtt5 (mosquitto): allowed
    with pytest.raises(EdgeConfigError, match="hosts"):
        parse_config(_edge(tmp_path, hosts=["127.0.0.1:99999"]), source="test")
    with pytest.raises(EdgeConfigError, match="twice"):
        parse_config(_edge(tmp_path, hosts=["127.0.0.1:1883"]), source="test")
    with pytest.raises(EdgeConfigError, match="plain TCP"):
        parse_config(
            _edge(tmp_path, hosts=["broker.example.org:1883"], password="secret-password"),
            source="test",
        )


def test_ingest_jetstream_source_settings() -> None:
    cfg = load_config(None, {"source": "jetstream", "jetstream": {"max_ack_pending": 500}})
    assert cfg.window == 500
    want = consumer_config(cfg)
    assert want.filter_subject == "$MQTT.msgs.sc.v1.*.telemetry"
    assert want.durable_name == "ingest"
    assert want.max_deliver == -1
    with pytest.raises(IngestConfigError, match="'//'"):
        load_config(None, {"source": "jetstream", "mqtt": {"topic_root": "city.oslo"}})
    with pytest.raises(IngestConfigError, match="plain TCP"):
        load_config(None, {"source": "jetstream", "jetstream": {
            "servers": ["nats://nats.example.org:4222"], "username": "i",
            "password": "secret-password"}})
    with pytest.raises(IngestConfigError):
        load_config(None, {"source": "jetstream", "jetstream": {"servers": ["http://x"]}})
    assert load_config(None, {}).source == "mqtt"
