"""The API's choice among InfluxDB replicas (pure logic) and the replica settings.

The end-to-end behaviour (failover on a SIGKILLed influxd, lag from the real consumers,
``/v1/health``, catch-up) is tested against real processes in
tests/cluster/test_cluster_replicas.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api._errors import ConfigError
from api._settings import ApiSettings
from api.storage import InfluxClient
from api.storage._replicas import Replica, ReplicaSet


async def _up() -> bool:
    return True


def _replica(name: str, *, durable: str | None = "d", lag: int | None = 0,
             healthy: bool = True) -> Replica:
    r = Replica(name=name, durable=durable, ping=_up, healthy=healthy)
    if lag is not None:
        r.pending, r.ack_pending = lag, 0
    return r


def _names(rs: ReplicaSet) -> list[str]:
    return [r.name for r in rs.order()]


def test_caught_up_first_then_unknown_then_least_lag_then_unhealthy() -> None:
    rs = ReplicaSet([
        _replica("down", healthy=False),
        _replica("lag9", lag=9),
        _replica("unknown", lag=None),
        _replica("lag3", lag=3),
        _replica("ok", lag=0),
        _replica("untracked", durable=None, lag=None),
    ])
    assert _names(rs) == ["ok", "untracked", "unknown", "lag3", "lag9", "down"]


def test_tolerance_and_configured_order_within_a_rank() -> None:
    rs = ReplicaSet([_replica("a", lag=2), _replica("b", lag=0)], max_lag=2)
    assert _names(rs) == ["a", "b"]
    rs.max_lag = 1
    assert _names(rs) == ["b", "a"]


def test_a_failed_query_demotes_until_it_answers_again() -> None:
    a, b = _replica("a"), _replica("b")
    rs = ReplicaSet([a, b])
    rs.failed(a, "InfluxDB did not answer")
    assert _names(rs) == ["b", "a"]
    health = {h.name: h for h in rs.health()}
    assert not health["a"].healthy
    assert health["a"].error == "InfluxDB did not answer"
    assert health["b"].reading
    assert not health["a"].reading
    rs.answered(b, after_failover=True)
    rs.answered(a, after_failover=False)
    assert _names(rs) == ["a", "b"]
    assert rs.failovers == 1
    assert a.failures == 1


def test_metrics_per_replica() -> None:
    registry = CollectorRegistry()
    rs = ReplicaSet([_replica("a", lag=None), _replica("b", lag=4, healthy=False)])
    registry.register(rs)
    text = generate_latest(registry).decode()
    assert 'smartcity_api_influx_replica_lag_messages{replica="a"} -1.0' in text
    assert 'smartcity_api_influx_replica_lag_messages{replica="b"} 4.0' in text
    assert 'smartcity_api_influx_replica_up{replica="b"} 0.0' in text
    assert 'smartcity_api_influx_replica_reading{replica="a"} 1.0' in text
    assert "smartcity_api_influx_failovers_total 0.0" in text


def test_single_influx_is_one_untracked_replica() -> None:
    client = InfluxClient.from_settings(ApiSettings(influx_url="http://127.0.0.1:9"))
    assert [(r.name, r.durable) for r in client.replicas.replicas] == [("influx", None)]
    assert client.url == "http://127.0.0.1:9"


_TWO = [{"name": "a", "url": "http://127.0.0.1:1", "durable": "ingest-a"},
        {"name": "b", "url": "http://127.0.0.1:2", "durable": "ingest-b"}]
_LAG = {"servers": ["nats://127.0.0.1:4222"]}


def test_replica_settings_build_the_client() -> None:
    settings = ApiSettings(influx_replicas=_TWO, replica_lag=_LAG)  # type: ignore[arg-type]
    client = InfluxClient.from_settings(settings)
    assert [(r.name, r.durable) for r in client.replicas.replicas] == [
        ("a", "ingest-a"), ("b", "ingest-b")
    ]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"influx_url": "http://127.0.0.1:8086", "influx_replicas": _TWO, "replica_lag": _LAG},
     "influx_url or influx_replicas"),
    ({"influx_replicas": _TWO}, "replica_lag.servers"),
    ({"influx_replicas": [*_TWO, _TWO[0]], "replica_lag": _LAG}, "distinct"),
    ({"influx_replicas": [{"name": "a", "url": "http://10.0.0.1:8086", "password": "x"}]},
     "plain http"),
    ({"influx_replicas": [{"name": "a", "url": "http://h:1", "ca_file": "/x.pem"}]},
     "https"),
    ({"influx_replicas": _TWO, "replica_lag": {"servers": ["nats://10.0.0.1:4222"],
                                               "password": "x"}}, "replica_lag.tls"),
])
def test_replica_settings_refused(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ApiSettings(**kwargs)  # type: ignore[arg-type]


def test_an_unreadable_replica_ca_file_names_the_replica(tmp_path: Path) -> None:
    settings = ApiSettings(influx_replicas=[  # type: ignore[list-item]
        {"name": "a", "url": "https://127.0.0.1:1", "ca_file": tmp_path / "missing.pem"}
    ])
    with pytest.raises(ConfigError, match=r"influx_replicas\[a\]"):
        InfluxClient.from_settings(settings)
