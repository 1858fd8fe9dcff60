"""The InfluxDB v1 HTTP client: InfluxQL over ``/query`` with httpx, one pooled connection set.

Errors are translated at this boundary: transport failures, timeouts and 5xx become
:class:`UpstreamUnavailable` (503); an InfluxQL error for a query the API built is a bug on
our side and becomes a 502 with InfluxDB's message kept in the log, not in the answer.

An ``https://`` InfluxDB is verified against ``ca_file`` (or the system's CA store) and is
shown the client certificate when one is given; a certificate that does not verify is a
503 like any unreachable InfluxDB, and the log says which certificate and which CA.

In the cluster profile the client reads from InfluxDB replicas (``influx_replicas``): each
query goes to the best one and fails over to the next (:mod:`api.storage._replicas`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import msgspec
from prometheus_client import CollectorRegistry

from api._errors import ConfigError, UpstreamUnavailable
from api._settings_replicas import InfluxReplica, ReplicaLagSettings
from api.storage._replicas import Replica, ReplicaMonitor, ReplicaSet
from foundation import BrokerSetupError, InfluxAccess

if TYPE_CHECKING:
    from api._settings import ApiSettings

__all__ = ["InfluxClient", "Series", "influx_verify"]

log = logging.getLogger("api.influx")


class Series(msgspec.Struct, frozen=True):
    """One series of a ``/query`` answer."""

    name: str
    columns: list[str]
    values: list[list[Any]] = []
    tags: dict[str, str] = {}


class _Result(msgspec.Struct):
    statement_id: int = 0
    series: list[Series] = []
    error: str | None = None


class _Answer(msgspec.Struct):
    results: list[_Result] = []
    error: str | None = None


_decoder = msgspec.json.Decoder(_Answer)


def influx_verify(access: InfluxAccess, key: str = "influx_") -> ssl.SSLContext | bool:
    """The TLS context for an ``https://`` InfluxDB (files read now; the platform's one
    InfluxDB access model), ``True`` for plain http; :class:`ConfigError` naming the setting
    (``key`` + ``ca_file``...) and the file. Start-up and ``api check-config`` both call it."""
    try:
        return access.ssl_context(key)
    except BrokerSetupError as exc:
        raise ConfigError(str(exc)) from exc


class _Endpoint:
    """One InfluxDB server: ``/query`` and ``/ping`` over a pooled httpx client."""

    def __init__(
        self, access: InfluxAccess, *, database: str, timeout: float, key: str = "influx_"
    ) -> None:
        self.url = access.url.rstrip("/")
        self.database = database
        self._timeout = timeout
        ca_file = access.ca_file
        self._trust = f"{key}ca_file {ca_file}" if ca_file else "the system CA store"
        password = access.password.get_secret_value() if access.password else ""
        auth = httpx.BasicAuth(access.username, password) if access.username else None
        verify = influx_verify(access, key)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            auth=auth,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            verify=verify,
        )

    def _log_failure(self, exc: BaseException) -> None:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            log.warning(
                "influx certificate does not verify",
                extra={"url": self.url, "trust": self._trust, "error": cause.verify_message},
            )
        else:
            log.warning("influx query failed", extra={"url": self.url, "error": repr(exc)})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def query(self, q: str, *, epoch: str = "ns") -> list[Series]:
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(
                    "/query", data={"q": q, "db": self.database, "epoch": epoch}
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            self._log_failure(exc)
            raise UpstreamUnavailable("InfluxDB did not answer") from exc
        if response.status_code >= 500:
            log.warning("influx query failed",
                        extra={"url": self.url, "status": response.status_code})
            raise UpstreamUnavailable(f"InfluxDB answered {response.status_code}")
        try:
            answer = _decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            raise UpstreamUnavailable("InfluxDB answered something that is not JSON") from exc
        error = answer.error or next((r.error for r in answer.results if r.error), None)
        if error is not None:
            if "database not found" in error:
                return []
            log.error("influx query refused", extra={"error": error, "query": q})
            raise UpstreamUnavailable("InfluxDB refused the query", status=502)
        return [s for r in answer.results for s in r.series]

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                response = await self._client.get("/ping")
        except (httpx.HTTPError, TimeoutError):
            return False
        return response.status_code == 204


class InfluxClient:
    """Async InfluxQL client for one database, on one InfluxDB or on replicas of it.

    Use as ``async with InfluxClient(...) as c``. With ``replicas`` (the cluster profile,
    :mod:`api.storage._replicas`) each query goes to the best replica and fails over to
    the next when one is unreachable, times out or answers 5xx; entering starts the
    monitor that pings the replicas and reads their consumers' lag.
    """

    def __init__(
        self,
        *,
        database: str,
        access: InfluxAccess | None = None,
        timeout: float = 10.0,
        replicas: Sequence[InfluxReplica] = (),
        lag: ReplicaLagSettings | None = None,
    ) -> None:
        """``access``: the one InfluxDB (default ``http://127.0.0.1:8086``, no credentials);
        an unusable TLS file is a :class:`ConfigError` naming the setting. ``replicas``
        replace it; ``lag`` says where their consumers' lag is read."""
        self.database = database
        if replicas:
            self._endpoints = [
                _Endpoint(r, database=database, timeout=timeout, key=f"influx_replicas[{r.name}].")
                for r in replicas
            ]
            names = [(r.name, r.durable) for r in replicas]
        else:
            one = access or InfluxAccess(url="http://127.0.0.1:8086")
            self._endpoints = [_Endpoint(one, database=database, timeout=timeout)]
            names = [("influx", None)]
        self._endpoint_of = {name: e for (name, _), e in zip(names, self._endpoints, strict=True)}
        self.replicas = ReplicaSet(
            [Replica(name=n, durable=d, ping=self._endpoint_of[n].ping) for n, d in names],
            max_lag=lag.max_lag if lag else 0,
        )
        self._monitor = (
            ReplicaMonitor(self.replicas, lag or ReplicaLagSettings()) if replicas else None
        )
        if self._monitor is not None:
            self._monitor.prepare()

    @property
    def url(self) -> str:
        """The URL queries go to now (the first replica's in the order)."""
        return self._endpoint_of[self.replicas.order()[0].name].url

    @classmethod
    def from_settings(
        cls, settings: ApiSettings, *, registry: CollectorRegistry | None = None
    ) -> InfluxClient:
        """The client the ``influx_*`` settings describe (URL, credentials, TLS, timeout),
        or ``influx_replicas`` with ``replica_lag`` when set. With ``registry``, the
        replicas' health, lag and failovers are exported there."""
        client = cls(
            database=settings.influx_database,
            access=settings.influx,
            timeout=settings.influx_timeout_s,
            replicas=settings.influx_replicas,
            lag=settings.replica_lag,
        )
        if registry is not None:
            registry.register(client.replicas)
        return client

    async def __aenter__(self) -> Self:
        if self._monitor is not None:
            await self._monitor.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._monitor is not None:
                await self._monitor.__aexit__(exc_type, exc, tb)
        finally:
            for endpoint in self._endpoints:
                await endpoint.aclose()

    async def query(self, q: str, *, epoch: str = "ns") -> list[Series]:
        """Run one InfluxQL statement; return its series (empty when nothing matched). On
        replicas, one that fails is marked and the next is asked; the last error is
        raised when none answers. A refused query (502) is not retried elsewhere."""
        replicas = self.replicas
        last: UpstreamUnavailable | None = None
        for i, replica in enumerate(replicas.order()):
            try:
                series = await self._endpoint_of[replica.name].query(q, epoch=epoch)
            except UpstreamUnavailable as exc:
                if exc.status_code == 502:
                    raise
                replicas.failed(replica, exc.detail)
                last = exc
                continue
            replicas.answered(replica, after_failover=i > 0)
            return series
        assert last is not None
        raise last

    async def ping(self) -> bool:
        """Whether some replica answers ``/ping`` (the only one, in the single profile)."""
        for replica in self.replicas.order():
            if await self._endpoint_of[replica.name].ping():
                return True
        return False
