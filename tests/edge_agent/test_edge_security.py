"""Uplink authentication against a real mosquitto: TLS with client certificates, passwords.

Certificates are made per test (``tests.tls_helpers``): a CA, a server certificate for
127.0.0.1 and a client certificate whose CN is the gateway's MQTT identity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import Central, await_until, base_config, make_config, running

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto
from telemetry import Reading
from tests.tls_helpers import make_pki, password_file

T0 = 1_750_000_000_000_000_000


def readings(n: int) -> list[Reading]:
    return [
        Reading(device="dev-1", measurement="Test", ts=T0 + i * 10**6, fields={"v": float(i)})
        for i in range(n)
    ]


@pytest.mark.integration
def test_tls_with_client_certificate_delivers_and_identifies_the_gateway(
    mosquitto_factory: Callable[..., Mosquitto],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    pki = make_pki(tmp_path / "pki", client_cn="gw-tls-7")
    broker = mosquitto_factory(
        tls=pki.mosquitto_tls(require_certificate=True, use_identity_as_username=True)
    )
    tls_port = broker.tls_port
    central = central_factory(broker, topic_root)  # on the plain loopback listener
    data = base_config(tmp_path, broker, topic_root)
    data["broker"].update(
        port=tls_port,
        tls={
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
        },
    )
    agent = EdgeAgent(make_config(data))
    # The same broker refuses a certificate from another CA.
    rogue_data = base_config(tmp_path / "rogue", broker, topic_root, gateway="gw-rogue")
    rogue_data["broker"].update(
        port=tls_port,
        connect_timeout_s=2.0,
        tls={
            "ca_file": str(pki.ca),
            "cert_file": str(pki.rogue_cert),
            "key_file": str(pki.rogue_key),
        },
    )
    rogue = EdgeAgent(make_config(rogue_data))

    async def main() -> None:
        async with running(agent), running(rogue):
            agent.submit(readings(300), None)
            await await_until(lambda: len(central.readings()) == 300, 10, "readings over TLS")
            await asyncio.sleep(0.5)
            assert rogue.uplink.stats.connects == 0
            assert rogue.health().links["uplink"] != "up"

    asyncio.run(main())
    log = broker.log_path.read_text()
    # use_identity_as_username: the broker knows the gateway by its certificate's CN.
    assert f"as {agent.uplink.client_id} (p5, c0, k30, u'gw-tls-7')" in log


@pytest.mark.integration
def test_password_auth_delivers_and_a_wrong_password_is_refused(
    mosquitto_factory: Callable[..., Mosquitto],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    passwd = password_file(
        tmp_path / "passwd", {"gw-pw": "s3cret-uplink", "central": "central-pw"}
    )
    broker = mosquitto_factory(password_file=passwd)
    central = Central(
        broker.port, topic_root, "gw-test", client_id="central-pw",
        username="central", password="central-pw",
    )  # fmt: skip
    secret = tmp_path / "uplink.secret"
    secret.write_text("s3cret-uplink\n")
    data = base_config(tmp_path, broker, topic_root)
    data["broker"].update(username="gw-pw", password_file=str(secret))
    agent = EdgeAgent(make_config(data))
    wrong = base_config(tmp_path / "wrong", broker, topic_root, gateway="gw-wrong")
    wrong["broker"].update(username="gw-pw", password="not-it")
    intruder = EdgeAgent(make_config(wrong))

    async def main() -> None:
        async with running(agent), running(intruder):
            agent.submit(readings(200), None)
            intruder.submit(readings(10), None)
            await await_until(lambda: len(central.readings()) == 200, 10, "readings")
            await asyncio.sleep(0.5)
            assert intruder.uplink.stats.connects == 0
            assert intruder.spool.stats().readings == 10, "kept in the spool, not lost"

    try:
        asyncio.run(main())
    finally:
        central.close()
    assert "not authorised" in broker.log_path.read_text().lower()
