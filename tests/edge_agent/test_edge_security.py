"""Uplink authentication against a real mosquitto: TLS with client certificates, passwords.

Certificates are made per test with the openssl CLI: a CA, a server certificate for
127.0.0.1 and a client certificate whose CN is the gateway's MQTT identity.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import Central, await_until, base_config, make_config, running

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto, free_port
from telemetry import Reading

T0 = 1_750_000_000_000_000_000


def readings(n: int) -> list[Reading]:
    return [
        Reading(device="dev-1", measurement="Test", ts=T0 + i * 10**6, fields={"v": float(i)})
        for i in range(n)
    ]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path, client_cn: str) -> None:
    """``ca.crt``; ``server.crt/key`` for 127.0.0.1; ``client.crt/key`` (CN ``client_cn``);
    ``rogue.crt/key``: a client certificate from another CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=smartcity test {ca}", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn, ca, ext in (
        ("server", "localhost", "ca", "server.ext"),
        ("client", client_cn, "ca", "client.ext"),
        ("rogue", client_cn, "rogue-ca", "client.ext"),
    ):
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{name}.crt",
                 cwd=d)  # fmt: skip


@pytest.mark.integration
def test_tls_with_client_certificate_delivers_and_identifies_the_gateway(
    mosquitto_factory: Callable[..., Mosquitto],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, client_cn="gw-tls-7")
    tls_port = free_port()
    broker = mosquitto_factory(
        extra_config=(
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {pki / 'ca.crt'}\n"
            f"certfile {pki / 'server.crt'}\n"
            f"keyfile {pki / 'server.key'}\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
        )
    )
    central = central_factory(broker, topic_root)  # on the plain loopback listener
    data = base_config(tmp_path, broker, topic_root)
    data["broker"].update(
        port=tls_port,
        tls={
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "client.crt"),
            "key_file": str(pki / "client.key"),
        },
    )
    agent = EdgeAgent(make_config(data))
    # The same broker refuses a certificate from another CA.
    rogue_data = base_config(tmp_path / "rogue", broker, topic_root, gateway="gw-rogue")
    rogue_data["broker"].update(
        port=tls_port,
        connect_timeout_s=2.0,
        tls={
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "rogue.crt"),
            "key_file": str(pki / "rogue.key"),
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
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "gw-pw", "s3cret-uplink"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwd), "central", "central-pw"],
        check=True,
        capture_output=True,
        timeout=30,
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
