"""The InfluxDB v1 HTTP client: InfluxQL over ``/query`` with httpx, one pooled connection set.

Errors are translated at this boundary: transport failures, timeouts and 5xx become
:class:`UpstreamUnavailable` (503); an InfluxQL error for a query the API built is a bug on
our side and becomes a 502 with InfluxDB's message kept in the log, not in the answer.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec

from api._errors import UpstreamUnavailable

__all__ = ["InfluxClient", "Series"]

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


class InfluxClient:
    """Async InfluxQL client for one database. Use as ``async with InfluxClient(...) as c``."""

    def __init__(
        self,
        *,
        url: str,
        database: str,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self._timeout = timeout
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._client = httpx.AsyncClient(
            base_url=self.url,
            auth=auth,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def query(self, q: str, *, epoch: str = "ns") -> list[Series]:
        """Run one InfluxQL statement; return its series (empty when nothing matched)."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(
                    "/query", data={"q": q, "db": self.database, "epoch": epoch}
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("influx query failed", extra={"error": repr(exc)})
            raise UpstreamUnavailable("InfluxDB did not answer") from exc
        if response.status_code >= 500:
            log.warning("influx query failed", extra={"status": response.status_code})
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
