"""Which InfluxDB replica the API reads from (cluster profile, docs/cluster.md).

::

    replica a ── influxd a ◀── ingest group a ◀── durable "ingest-a" ─┐
    replica b ── influxd b ◀── ingest group b ◀── durable "ingest-b" ─┤ $MQTT_msgs
                                                                      │ (JetStream)
    task api.influx-replicas, every check_interval_s:                 │
      ping each replica (GET /ping)  ──▶ healthy                      │
      consumer info of each durable  ──▶ lag = num_pending + num_ack_pending
                                                                      │
    a query: replicas in order (:meth:`ReplicaSet.order`), the first that answers wins;
    one that fails (unreachable, timeout, 5xx) is marked unhealthy and the next is tried.

Order: healthy and caught up (lag within ``max_lag``, or no durable to track) first, then
healthy with an unknown lag (NATS unreachable), then healthy and lagging (least lag first),
then the unhealthy ones (their mark may be stale); the configured order within each. So a
replica whose InfluxDB was down is read again only once its consumer has caught up, and
the API answers from a lagging replica rather than not at all.

The single-node profile is one replica without a durable: no monitor runs, and a failed
query is the error it always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from api._errors import ConfigError
from api._settings_replicas import ReplicaLagSettings
from foundation import BrokerSetupError

__all__ = ["Replica", "ReplicaHealth", "ReplicaMonitor", "ReplicaSet"]

log = logging.getLogger("api.influx")

_NATS_TIMEOUT_S: Final = 2.0


@dataclass(slots=True)
class Replica:
    """One replica's state, as the monitor and the queries last saw it."""

    name: str
    durable: str | None
    #: ``GET /ping`` of this replica (``() -> bool``).
    ping: Callable[[], Awaitable[bool]]
    healthy: bool = True
    pending: int | None = None
    ack_pending: int | None = None
    error: str | None = None
    lag_error: str | None = None
    checked_at: float | None = None
    queries: int = 0
    failures: int = 0

    @property
    def lag(self) -> int | None:
        """Messages of its consumer not stored in it yet (``None``: unknown)."""
        if self.pending is None or self.ack_pending is None:
            return None
        return self.pending + self.ack_pending


class ReplicaHealth(msgspec.Struct):
    """One replica in ``/v1/health``."""

    name: str
    durable: str | None
    healthy: bool
    #: ``num_pending + num_ack_pending`` of its durable consumer; ``null``: not tracked or
    #: not readable now (``lag_error`` says why).
    lag: int | None
    pending: int | None
    ack_pending: int | None
    caught_up: bool
    #: Whether queries go to this replica now.
    reading: bool
    error: str | None
    lag_error: str | None
    checked_at: float | None


class ReplicaSet:
    """The replicas and the order queries try them in."""

    def __init__(self, replicas: Sequence[Replica], *, max_lag: int = 0) -> None:
        if not replicas:
            raise ConfigError("no InfluxDB replica configured")
        self.replicas = list(replicas)
        self.max_lag = max_lag
        self.failovers = 0

    def caught_up(self, r: Replica) -> bool:
        if r.durable is None:
            return True
        lag = r.lag
        return lag is not None and lag <= self.max_lag

    def _rank(self, i: int, r: Replica) -> tuple[int, int, int]:
        if not r.healthy:
            return (3, 0, i)
        if self.caught_up(r):
            return (0, 0, i)
        lag = r.lag
        if lag is None:
            return (1, 0, i)
        return (2, lag, i)

    def order(self) -> list[Replica]:
        """The replicas, best first (see the module docstring)."""
        if len(self.replicas) == 1:
            return self.replicas
        ranked = sorted(enumerate(self.replicas), key=lambda p: self._rank(*p))
        return [r for _, r in ranked]

    def failed(self, r: Replica, error: str) -> None:
        """A query to ``r`` failed: it is unhealthy until a ping or a query succeeds."""
        r.failures += 1
        r.error = error
        if r.healthy and len(self.replicas) > 1:
            log.warning("influx replica failed; failing over",
                        extra={"replica": r.name, "error": error})
        r.healthy = False

    def answered(self, r: Replica, *, after_failover: bool) -> None:
        r.queries += 1
        r.healthy = True
        r.error = None
        if after_failover:
            self.failovers += 1

    def health(self) -> list[ReplicaHealth]:
        first = self.order()[0]
        return [
            ReplicaHealth(
                name=r.name, durable=r.durable, healthy=r.healthy, lag=r.lag,
                pending=r.pending, ack_pending=r.ack_pending, caught_up=self.caught_up(r),
                reading=r is first, error=r.error, lag_error=r.lag_error,
                checked_at=r.checked_at,
            )
            for r in self.replicas
        ]

    # -- Prometheus (a custom collector: the values are read at scrape time) -------------
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "smartcity_api_influx_replica_up",
            "1 while the InfluxDB replica answers (last ping or query)", labels=["replica"])
        lag = GaugeMetricFamily(
            "smartcity_api_influx_replica_lag_messages",
            "num_pending + num_ack_pending of the replica's durable consumer (-1: unknown)",
            labels=["replica"])
        reading = GaugeMetricFamily(
            "smartcity_api_influx_replica_reading",
            "1 for the replica queries go to now", labels=["replica"])
        failures = CounterMetricFamily(
            "smartcity_api_influx_replica_failures",
            "Queries to the replica that failed (unreachable, timeout, 5xx)",
            labels=["replica"])
        first = self.order()[0]
        for r in self.replicas:
            up.add_metric([r.name], 1.0 if r.healthy else 0.0)
            lag.add_metric([r.name], float(r.lag) if r.lag is not None else -1.0)
            reading.add_metric([r.name], 1.0 if r is first else 0.0)
            failures.add_metric([r.name], float(r.failures))
        failovers = CounterMetricFamily(
            "smartcity_api_influx_failovers",
            "Queries answered by another replica after the preferred one failed")
        failovers.add_metric([], float(self.failovers))
        yield from (up, lag, reading, failures, failovers)


@dataclass(slots=True)
class ReplicaMonitor:
    """Pings the replicas and reads their consumers' lag every ``check_interval_s``.
    An async context manager owning its task (``api.influx-replicas``); a NATS cluster that
    cannot be reached leaves the lags unknown, it never stops the API."""

    replicas: ReplicaSet
    settings: ReplicaLagSettings
    _password: str | None = None
    _ssl: Any = None
    _nc: NatsClient | None = None
    _task: asyncio.Task[None] | None = None
    _warned: set[str] = field(default_factory=set)

    def prepare(self) -> None:
        """Read the password file and the TLS files now; :class:`ConfigError` naming the key."""
        s = self.settings
        try:
            self._password = s.read_password("replica_lag.password_file")
            self._ssl = None if s.tls is None else s.tls.ssl_context("replica_lag.tls.")
        except BrokerSetupError as exc:
            raise ConfigError(str(exc)) from exc

    async def __aenter__(self) -> ReplicaMonitor:
        self.prepare()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * _NATS_TIMEOUT_S):
                await self.check()  # the first query already knows who is caught up
        self._task = asyncio.create_task(self._run(), name="api.influx-replicas")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await nc.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval_s)
            await self.check()

    async def check(self) -> None:
        """One round: every replica pinged, every durable's lag read (concurrently)."""
        nc = await self._connection()
        await asyncio.gather(*(self._check(r, nc) for r in self.replicas.replicas))

    async def _check(self, r: Replica, nc: NatsClient | None) -> None:
        r.healthy = await r.ping()
        r.checked_at = time.time()
        if r.healthy:
            r.error = None
        elif r.error is None:
            r.error = "ping failed"
        if r.durable is None:
            return
        if nc is None:
            self._unknown(r, "NATS unreachable")
            return
        try:
            info = await nc.jsm().consumer_info(
                self.settings.stream, r.durable, timeout=_NATS_TIMEOUT_S
            )
        except nats.js.errors.NotFoundError:
            self._unknown(r, f"consumer {r.durable!r} not found")
            return
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self._unknown(r, str(exc) or type(exc).__name__)
            return
        r.pending, r.ack_pending, r.lag_error = info.num_pending, info.num_ack_pending, None
        self._warned.discard(r.name)

    def _unknown(self, r: Replica, why: str) -> None:
        r.pending = r.ack_pending = None
        r.lag_error = why
        if r.name not in self._warned:
            self._warned.add(r.name)
            log.warning("influx replica lag unknown", extra={"replica": r.name, "error": why})

    async def _connection(self) -> NatsClient | None:
        nc = self._nc
        if nc is not None and not nc.is_closed:
            return nc if nc.is_connected else None
        s = self.settings

        async def quiet(exc: Exception) -> None:
            log.debug("NATS client error", extra={"error": str(exc)})

        options: dict[str, Any] = {
            "servers": list(s.servers), "name": "api.replica-lag", "connect_timeout": 2,
            "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 1,
            "error_cb": quiet,
        }
        if s.username is not None:
            options["user"] = s.username
            options["password"] = self._password or ""
        if self._ssl is not None:
            options["tls"] = self._ssl
        try:
            async with asyncio.timeout(2 * _NATS_TIMEOUT_S):
                self._nc = await nats.connect(**options)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.debug("NATS connect failed", extra={"error": str(exc) or type(exc).__name__})
            return None
        return self._nc
