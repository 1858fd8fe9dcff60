"""The local MQTT input over TLS: a gateway-local mosquitto with a TLS listener and a password.

Sensors publish on the local broker's TLS listener; the agent's ``mqtt`` input subscribes
there with ``tls`` (CA, client certificate) and a ``password_file``, and the readings reach
the central broker. An input pointed at the TLS listener with another CA never comes up.
"""

from __future__ import annotations

import asyncio
import gc
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edge_helpers import Central, await_until, base_config, make_config, running
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import ConfigError, EdgeAgent, InputError
from smartcity._localstack import Mosquitto
from tests.tls_helpers import Pki, make_pki, password_file

T0 = 1_750_000_000_000_000_000
USER, PASSWORD = "edge-local", "local-s3cret"


def _input(root: str, broker: Mosquitto, pki: Pki, secret: Path, **tls: Any) -> dict[str, Any]:
    return {
        "type": "mqtt",
        "name": "local",
        "host": "127.0.0.1",
        "port": broker.tls_port,
        "client_id": f"in-{root}",
        "username": USER,
        "password_file": str(secret),
        "tls": {
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
            **tls,
        },
        "subscriptions": [
            {
                "topic": f"{root}/local/+/reading",
                "device": "{2}",
                "measurement": "Test",
                "fields": {"v": "$.v"},
                "timestamp": "$.t",
            }
        ],
    }


@pytest.fixture
def local_broker(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> tuple[Mosquitto, Pki, Path]:
    """The gateway-local broker: TLS listener requiring a client certificate, passwords."""
    pki = make_pki(tmp_path / "pki", client_cn="edge-local")
    broker = mosquitto_factory(
        password_file=password_file(tmp_path / "passwd", {USER: PASSWORD, "sensor": "sensor-pw"}),
        tls=pki.mosquitto_tls(require_certificate=True),
    )
    secret = tmp_path / "local.secret"
    secret.write_text(PASSWORD + "\n")
    return broker, pki, secret


def _sensor(broker: Mosquitto, pki: Pki, root: str) -> mqtt.Client:
    """A sensor publishing on the local broker's TLS listener."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sensor-{root}")
    client.username_pw_set("sensor", "sensor-pw")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    client.tls_set_context(ctx)
    assert broker.tls_port is not None
    client.connect("127.0.0.1", broker.tls_port)
    client.loop_start()
    return client


@pytest.mark.integration
def test_mqtt_input_reads_a_tls_local_broker_with_a_client_certificate(
    mosquitto: Mosquitto,
    local_broker: tuple[Mosquitto, Pki, Path],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    broker, pki, secret = local_broker
    central = central_factory(mosquitto, topic_root)  # the central broker, plain loopback
    data = base_config(tmp_path, mosquitto, topic_root)
    data["inputs"] = [_input(topic_root, broker, pki, secret)]
    agent = EdgeAgent(make_config(data))
    sensor = _sensor(broker, pki, topic_root)
    n = 200

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.health().links.get("local") == "up", 10, "input up")
            for i in range(n):
                payload = json.dumps({"v": i, "t": T0 + i * 1_000_000}).encode()
                sensor.publish(f"{topic_root}/local/dev-{i % 3}/reading", payload, qos=1)
            await await_until(lambda: len(central.readings()) == n, 15, "readings over TLS")

    try:
        asyncio.run(main())
    finally:
        sensor.disconnect()
        sensor.loop_stop()
    assert {dev for dev, _ts, _m in central.readings()} == {"dev-0", "dev-1", "dev-2"}
    log = broker.log_path.read_text()
    assert f"as in-{topic_root} (p5, c0, k30, u'{USER}')" in log


# paho 2.2 leaves the socket of a failed TLS handshake to the garbage collector
# (Client._ssl_wrap_socket does not close it when do_handshake raises): a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.integration
def test_mqtt_input_with_another_ca_never_comes_up(
    mosquitto: Mosquitto,
    local_broker: tuple[Mosquitto, Pki, Path],
    topic_root: str,
    tmp_path: Path,
) -> None:
    broker, pki, secret = local_broker
    data = base_config(tmp_path, mosquitto, topic_root)
    # The broker's certificate is not signed by the rogue CA: the handshake fails.
    rogue_ca = str(pki.dir / "rogue-ca.crt")
    data["inputs"] = [_input(topic_root, broker, pki, secret, ca_file=rogue_ca)]
    agent = EdgeAgent(make_config(data))

    async def main() -> None:
        async with running(agent):
            await asyncio.sleep(1.5)
            assert agent.health().links.get("local") != "up"

    asyncio.run(main())
    gc.collect()  # collect the leaked sockets while the warning is ignored


def test_mqtt_input_config_refuses_what_the_uplink_refuses(tmp_path: Path) -> None:
    pki = Pki(tmp_path)  # no files: parsing does not read them
    broker = Mosquitto(data_dir=tmp_path / "unused", port=1)
    data = base_config(tmp_path, broker, "sc")
    bad = _input("sc", broker, pki, tmp_path / "secret")
    bad.update(host="10.0.0.7", port=1883)
    del bad["tls"]
    data["inputs"] = [bad]
    with pytest.raises(ConfigError) as err:
        make_config(data)
    assert "inputs[0]: a password over plain TCP to a remote broker (10.0.0.7) is refused" in str(
        err.value
    )
    bad["tls"] = {"insecure": True}
    with pytest.raises(ConfigError, match=r"inputs\[0\]: tls.insecure needs allow_insecure"):
        make_config(data)
    bad["allow_insecure"] = True
    make_config(data)


def test_mqtt_input_with_a_missing_ca_file_fails_at_start_naming_it(tmp_path: Path) -> None:
    broker = Mosquitto(data_dir=tmp_path / "unused", port=1)
    data = base_config(tmp_path, broker, "sc")
    missing = tmp_path / "nowhere" / "ca.pem"
    spec = _input("sc", broker, Pki(tmp_path), tmp_path / "secret")
    spec["port"] = 8883
    spec["tls"] = {"ca_file": str(missing)}
    data["inputs"] = [spec]
    cfg = make_config(data)  # a config is valid without its files (checked on the gateway)
    with pytest.raises(InputError, match=rf"input 'local': tls.ca_file: file not found: {missing}"):
        EdgeAgent(cfg)
