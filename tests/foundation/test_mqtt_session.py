"""foundation.mqtt against a real mosquitto: the guarantees of docs/mqtt-session.md.

Every wait for a message from the broker is bounded; a test that restarts or cuts a broker
asks ``mosquitto_factory`` for a private one.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from foundation import Backoff, BrokerAccess, BrokerTls, free_port
from foundation.mqtt import (
    NO_MATCHING_SUBSCRIBERS,
    Message,
    MqttConfigError,
    MqttConnectError,
    MqttReentrantError,
    MqttSession,
    MqttWindowFull,
    Outgoing,
    SessionConfig,
    publish_properties,
)
from smartcity._localstack import Mosquitto
from tests.tls_helpers import make_pki, password_file

pytestmark = pytest.mark.integration

FAST = Backoff(initial=0.05, maximum=0.3)
WAIT = 5.0


def run(main: Callable[[], Coroutine[Any, Any, None]], limit: float = 25.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await main()

    asyncio.run(bounded())


def cfg(broker: Mosquitto, client_id: str = "", **kw: Any) -> SessionConfig:
    return SessionConfig(
        host=broker.host, port=broker.port, client_id=client_id, backoff=FAST, **kw
    )


async def receive(session: MqttSession, within: float = WAIT) -> Message:
    async with asyncio.timeout(within):
        return await anext(session.messages())


async def receive_n(session: MqttSession, n: int, within: float = WAIT) -> list[Message]:
    return [await receive(session, within) for _ in range(n)]


async def enter(config: SessionConfig) -> None:
    async with MqttSession(config):
        pass


async def epoch_at_least(session: MqttSession, epoch: int, within: float = WAIT) -> None:
    async with asyncio.timeout(within):
        while session.epoch < epoch or not session.connected:
            if session.connected:
                await session.wait_disconnected()
            await session.wait_connected()


def test_round_trip_properties_retain_and_puback_reason(
    mosquitto: Mosquitto, topic_root: str
) -> None:
    async def main() -> None:
        async with (
            MqttSession(cfg(mosquitto, f"{topic_root}-sub")) as sub,
            MqttSession(cfg(mosquitto, f"{topic_root}-pub", max_inflight=2)) as pub,
        ):
            assert await sub.subscribe(f"{topic_root}/a/#", qos=1) == 1
            props = publish_properties(
                response_topic=f"{topic_root}/reply",
                correlation_data=b"\x01\x02",
                user_properties=[("k", "v")],
            )
            rc = await pub.publish(f"{topic_root}/a/1", b"hello", retain=True, properties=props)
            assert rc == 0
            msg = await receive(sub)
            assert (msg.topic, msg.payload, msg.qos, msg.dup) == (
                f"{topic_root}/a/1",
                b"hello",
                1,
                False,
            )
            assert msg.response_topic == f"{topic_root}/reply"
            assert msg.correlation_data == b"\x01\x02"
            assert msg.user_properties == [("k", "v")]
            assert msg.epoch == sub.epoch == 1
            assert not await msg.ack()  # manual ack is off: paho acked it on receipt

            # A PUBACK is not a delivery: 0x10 when nobody subscribes.
            assert await pub.publish(f"{topic_root}/nobody", b"x") == NO_MATCHING_SUBSCRIBERS

            # The in-flight window is bounded.
            futs = [pub.publish_nowait(f"{topic_root}/a/2", b"w") for _ in range(2)]
            with pytest.raises(MqttWindowFull):
                pub.publish_nowait(f"{topic_root}/a/2", b"w")
            assert await asyncio.gather(*futs) == [0, 0]

            # Retained: a new subscriber gets it with the retain flag.
            async with MqttSession(cfg(mosquitto, f"{topic_root}-late")) as late:
                await late.subscribe(f"{topic_root}/a/1")
                retained = await receive(late)
                assert (retained.payload, retained.retain) == (b"hello", True)
            await pub.publish(f"{topic_root}/a/1", b"", retain=True)  # clear it

    run(main)


def test_manual_acks_are_per_connection_and_unacked_messages_come_back(
    mosquitto: Mosquitto, topic_root: str
) -> None:
    topic = f"{topic_root}/work"

    async def main() -> None:
        config = cfg(
            mosquitto,
            f"{topic_root}-worker",
            clean_start=False,
            session_expiry_s=60,
            manual_ack=True,
            receive_maximum=10,
        )
        async with MqttSession(config) as sub, MqttSession(cfg(mosquitto)) as pub:
            await sub.subscribe(topic)
            for i in range(5):
                await pub.publish(topic, b"%d" % i)
            first = await receive_n(sub, 5)
            assert [m.payload for m in first] == [b"0", b"1", b"2", b"3", b"4"]
            assert [await m.ack() for m in first[:2]] == [True, True]
            await asyncio.sleep(0.2)  # the PUBACKs leave before the cut

            sub.drop()  # the connection goes; the persistent session stays at the broker
            await epoch_at_least(sub, 2)
            assert sub.status.session_present
            # Acks of the lost connection are never sent: the broker redelivers instead.
            assert [await m.ack() for m in first[2:]] == [False, False, False]
            again = await receive_n(sub, 3)
            assert [(m.payload, m.dup, m.epoch) for m in again] == [
                (b"2", True, 2),
                (b"3", True, 2),
                (b"4", True, 2),
            ]

            sub.drop()  # not acked on epoch 2 either: they come back once more
            await epoch_at_least(sub, 3)
            third = await receive_n(sub, 3)
            assert [m.payload for m in third] == [b"2", b"3", b"4"]
            assert [await m.ack() for m in reversed(third)] == [True, True, True]
            await asyncio.sleep(0.2)

            sub.drop()  # everything is acknowledged now: only new messages arrive
            await epoch_at_least(sub, 4)
            await pub.publish(topic, b"marker")
            assert (await receive(sub)).payload == b"marker"

    run(main)


def test_receive_maximum_bounds_unacknowledged_messages(
    mosquitto: Mosquitto, topic_root: str
) -> None:
    topic = f"{topic_root}/rm"

    async def main() -> None:
        config = cfg(mosquitto, f"{topic_root}-rm", manual_ack=True, receive_maximum=4)
        async with MqttSession(config) as sub, MqttSession(cfg(mosquitto)) as pub:
            await sub.subscribe(topic)
            for i in range(12):
                pub.publish_nowait(topic, b"%d" % i)  # window 20: no wait needed
            held = await receive_n(sub, 4)
            await asyncio.sleep(0.5)  # the broker holds the rest back
            assert sub.status.buffered == 0
            with pytest.raises(TimeoutError):
                await receive(sub, within=0.3)
            await held[0].ack()
            # An ack opens the window again. (Once acks flow, mosquitto 2.0.11 overshoots
            # Receive Maximum: docs/ingest.md. The layer's max_buffered bounds the rest.)
            assert (await receive(sub)).payload == b"4"

    run(main)


def test_reconnects_after_a_broker_restart_and_restores_subscriptions(
    mosquitto_factory: Callable[..., Mosquitto], topic_root: str
) -> None:
    broker = mosquitto_factory()
    topic = f"{topic_root}/restart"
    seen: list[bool] = []

    async def main() -> None:
        session = MqttSession(
            cfg(broker, f"{topic_root}-r"),
            on_connect=lambda st: seen.append(st.connected),
            on_disconnect=lambda st: seen.append(st.connected),
        )
        async with session:
            await session.subscribe(topic)
            broker.stop()
            async with asyncio.timeout(WAIT):
                await session.wait_disconnected()
            for _ in range(100):  # the session retries (ECONNREFUSED) while the broker is down
                if session.status.connect_failures:
                    break
                await asyncio.sleep(0.05)
            status = session.status
            assert not status.connected
            assert isinstance(status.last_error, MqttConnectError)
            assert status.last_error.errno == errno.ECONNREFUSED
            broker.start()
            await epoch_at_least(session, 2)
            assert session.status.reconnects == 1
            assert not session.status.session_present  # clean start: restored by the layer
            async with MqttSession(cfg(broker)) as pub:
                assert await pub.publish(topic, b"after") == 0
            assert (await receive(session)).payload == b"after"
        assert seen == [True, False, True, False]

    run(main)


def test_birth_on_every_connect_and_will_on_abrupt_loss(
    mosquitto: Mosquitto, topic_root: str
) -> None:
    status = f"{topic_root}/gw/status"
    births = iter(range(100))

    async def main() -> None:
        gateway = MqttSession(
            cfg(
                mosquitto,
                f"{topic_root}-gw",
                will=Outgoing(topic=status, payload=b"dead", retain=True),
                birth=lambda: Outgoing(
                    topic=status, payload=b"born %d" % next(births), retain=True
                ),
            )
        )
        async with MqttSession(cfg(mosquitto)) as watcher:
            await watcher.subscribe(status)
            async with gateway:
                assert (await receive(watcher)).payload == b"born 0"
                gateway.drop()
                assert (await receive(watcher)).payload == b"dead"
                assert (await receive(watcher)).payload == b"born 1"
                gateway.abort()
                assert (await receive(watcher)).payload == b"dead"
            async with gateway:  # reusable
                assert (await receive(watcher)).payload == b"born 2"
            # A clean exit sends DISCONNECT: no will before our marker.
            await watcher.publish(status, b"", retain=True)
            assert (await receive(watcher)).payload == b""

    run(main)


def test_tls_with_client_certificate_and_password_file(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], topic_root: str
) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = mosquitto_factory(
        password_file=password_file(tmp_path / "passwd", {"gw": "gw-pw"}),
        tls=pki.mosquitto_tls(require_certificate=True),
    )
    assert broker.tls_port is not None
    secret = tmp_path / "secret"
    secret.write_text("gw-pw\n")
    tls = BrokerTls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    good = SessionConfig(
        host="localhost",
        port=broker.tls_port,
        client_id=f"{topic_root}-tls",
        access=BrokerAccess(username="gw", password_file=secret, tls=tls),
    )
    assert good.url == f"mqtts://localhost:{broker.tls_port}"

    async def main() -> None:
        async with MqttSession(good) as s:
            await s.subscribe(f"{topic_root}/tls")
            assert await s.publish(f"{topic_root}/tls", b"secure") == 0
            assert (await receive(s)).payload == b"secure"
        wrong = BrokerAccess(username="gw", password="nope", tls=tls)
        with pytest.raises(MqttConnectError) as refused:
            await enter(SessionConfig(host="localhost", port=broker.tls_port, access=wrong))
        assert refused.value.reason_code in (0x86, 0x87)  # bad user name or password
        missing = BrokerAccess(tls=BrokerTls(ca_file=tmp_path / "missing.crt"))
        with pytest.raises(MqttConfigError, match=r"^tls\.ca_file: file not found"):
            await enter(SessionConfig(port=broker.tls_port, access=missing))

    run(main)


def test_mqtt_311_mode(mosquitto: Mosquitto, topic_root: str) -> None:
    topic = f"{topic_root}/v3"
    with pytest.raises(MqttConfigError, match="receive_maximum"):
        SessionConfig(version="3.1.1", receive_maximum=10)

    async def main() -> None:
        config = cfg(
            mosquitto, f"{topic_root}-v3", version="3.1.1", clean_start=False, manual_ack=True
        )
        async with MqttSession(config) as sub, MqttSession(cfg(mosquitto, version="3.1.1")) as pub:
            assert await sub.subscribe(topic, qos=1) == 1
            assert await pub.publish(topic, b"old") == 0  # 3.1.1 has no reason codes
            assert await pub.publish(f"{topic_root}/nobody", b"x") == 0
            msg = await receive(sub)
            assert (msg.payload, msg.properties) == (b"old", None)
            sub.drop()  # not acked: the persistent 3.1.1 session redelivers it
            await epoch_at_least(sub, 2)
            assert sub.status.session_present
            again = await receive(sub)
            assert (again.payload, again.dup) == (b"old", True)
            assert await again.ack()

    run(main)


def test_fails_fast_without_a_broker_and_owns_its_tasks() -> None:
    port = free_port("127.0.0.1")

    async def main() -> None:
        with pytest.raises(MqttConnectError) as exc:
            await enter(SessionConfig(port=port, client_id="nobody"))
        assert exc.value.errno == errno.ECONNREFUSED
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mqtt[")]

    run(main)


def test_reusable_not_reentrant_and_cleans_up(mosquitto: Mosquitto, topic_root: str) -> None:
    async def main() -> None:
        session = MqttSession(cfg(mosquitto, f"{topic_root}-re"))
        for _ in range(2):
            async with session:
                assert [t.get_name() for t in asyncio.all_tasks() if "mqtt[" in t.get_name()] == [
                    f"mqtt[{topic_root}-re].connection"
                ]
                with pytest.raises(MqttReentrantError):
                    async with session:
                        pass
            assert not session.connected
            assert not [t for t in asyncio.all_tasks() if "mqtt[" in t.get_name()]

    run(main)
