"""The session's failover between broker addresses (foundation/mqtt/_failover.py), pure.

The broker-backed behaviour (a node down, the next one used) is in test_mqtt_session.py and
tests/cluster/; here the order of addresses and the backoff schedule, without a broker.
"""

from __future__ import annotations

import asyncio

from foundation import Backoff
from foundation.mqtt import MqttConnectError, SessionConfig
from foundation.mqtt._failover import Failover
from foundation.mqtt._waiters import Waiters

NODES = (("n1", 1883), ("n2", 1883), ("n3", 1883))
NO_JITTER = Backoff(initial=0.1, maximum=0.4, multiplier=2.0, jitter=0.0)


def _failover(hosts: tuple[tuple[str, int], ...] = NODES) -> Failover:
    return Failover(SessionConfig(hosts=hosts, backoff=NO_JITTER))


def test_a_failed_connect_tries_the_next_address_at_once_until_a_round_failed() -> None:
    f = _failover()
    f.start()
    err = MqttConnectError("refused", url="mqtt://n1:1883")
    assert f.address == ("n1", 1883)
    assert f.connect_failed(err) is False
    assert f.address == ("n2", 1883)
    assert f.connect_failed(err) is False
    assert f.connect_failed(err) is True  # n1, n2, n3 all failed: a whole round
    assert f.address == ("n1", 1883)
    # After a whole round: the backoff grows, capped, and a connect resets it.
    assert [f.retry_delay(err) for _ in range(4)] == [0.1, 0.2, 0.4, 0.4]
    f.connected()
    assert f.retry_delay(err) == 0.1


def test_a_lost_connection_moves_on_and_starts_a_new_round_there() -> None:
    f = _failover()
    f.start()
    assert f.connect_failed(MqttConnectError("refused", url="x")) is False  # on n2 now
    assert f.lost("connection lost") == 0.1
    assert f.address == ("n3", 1883)
    err = MqttConnectError("refused", url="x")
    assert f.connect_failed(err) is False  # n1
    assert f.connect_failed(err) is False  # n2
    assert f.connect_failed(err) is True  # back at n3: the round that started there failed


def test_one_address_stays_put() -> None:
    f = _failover(())
    f.start()
    assert f.connect_failed(MqttConnectError("refused", url="x")) is True
    f.lost("gone")
    assert f.address == ("127.0.0.1", 1883)
    assert f.url == "mqtt://127.0.0.1:1883"


def test_waiters_wake_one_in_order_or_all() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        w = Waiters()
        woken: list[int] = []

        async def waiter(i: int) -> None:
            await w.wait(loop)
            woken.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert len(w) == 3
        w.wake_one()
        await asyncio.sleep(0)
        assert woken == [0]
        tasks[1].cancel()  # a cancelled waiter leaves the queue itself
        await asyncio.sleep(0)
        assert len(w) == 1
        w.wake_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert woken == [0, 2]
        assert not w

    asyncio.run(scenario())
