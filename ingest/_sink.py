"""InfluxDB writers: the v1 HTTP API (writes on keep-alive connections of their own, setup
calls through httpx), or v2 via influxdb-client.

A sink does one thing: ``await sink.write(body)`` returns when InfluxDB answered 204 and
raises :class:`WriteRetryable` (5xx, 429, timeouts, connection errors; with Retry-After) or
:class:`WriteRejected` (4xx: some points are refused and retrying cannot help). Retrying,
backoff and bisecting a rejected body are the caller's business (``_writer.py``).

InfluxDB 1.x answers a body with some bad points with ``400 partial write: ... dropped=N``
after storing the good ones; rewriting those is harmless because a point is identified by
measurement, tag set and timestamp.

TLS (``https://`` URLs): the server is verified against ``influx.ca_file`` (or the system's
CA store), a client certificate is presented when configured. A missing or unusable file is a
:class:`ConfigError` naming the key when the sink is built; a certificate that does not verify
stops ``prepare()`` at once with :class:`SchemaError` (retrying cannot fix it) and makes a
write :class:`WriteRetryable` saying so (a certificate fixed on the server lets the backlog
drain).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import json
import ssl
import time
from typing import Any, Final, Protocol, cast

import httpx

from foundation import BrokerSetupError
from ingest._config import InfluxConfig
from ingest._errors import ConfigError, SchemaError, WriteRejected, WriteRetryable
from ingest._http import WritePool

__all__ = ["InfluxV1Sink", "InfluxV2Sink", "Sink", "make_sink", "parse_retry_after"]

_RETRYABLE_4XX: Final = frozenset({408, 429})


class Sink(Protocol):
    """Where line protocol goes."""

    async def prepare(self) -> None:
        """Check the server and create the database / retention policy if configured."""

    async def write(self, body: bytes) -> None:
        """Write a line-protocol body; return only on success (HTTP 204)."""

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _ssl_context(config: InfluxConfig) -> ssl.SSLContext | bool:
    """The client context for an ``https://`` URL (the platform's one InfluxDB access
    model); :class:`ConfigError` names the key of a missing or unusable file."""
    try:
        return config.ssl_context("influx.")
    except BrokerSetupError as exc:
        raise ConfigError(str(exc)) from exc


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a transport error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_reason(config: InfluxConfig, error: ssl.SSLError) -> str:
    trust = f"influx.ca_file {config.ca_file}" if config.ca_file else "the system CA store"
    detail = getattr(error, "verify_message", None) or error.reason or str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {config.url} does not verify against {trust}: {detail}"
    return f"TLS handshake with {config.url} failed: {detail}"


def _answer_text(content: bytes) -> str:
    """InfluxDB's reason: the ``error`` of its JSON answer, or the start of the text."""
    text = content.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:2000]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return text.strip()[:2000]


class _TlsRefused(SchemaError):
    """The server's certificate did not verify (or the handshake failed) at start."""


class InfluxV1Sink:
    """``POST /write?db=..&rp=..&precision=ns`` on keep-alive connections of its own
    (:mod:`ingest._http`); ``/ping`` and ``/query`` through httpx."""

    def __init__(self, config: InfluxConfig, *, max_connections: int) -> None:
        self._config = config
        auth: tuple[str, str] | None = None
        if config.username is not None and config.password is not None:
            auth = (config.username, config.password.get_secret_value())
        headers: dict[str, str] = {}
        if config.token is not None:
            headers["Authorization"] = f"Token {config.token.get_secret_value()}"
        context = _ssl_context(config)
        self._client = httpx.AsyncClient(
            base_url=config.url,
            auth=auth,
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 5.0)),
            verify=context,
        )
        # Writes go through their own keep-alive connections (``_http.py``: a tenth of
        # httpx's CPU per body); the setup calls above stay on httpx.
        write_headers = [("Content-Type", "text/plain; charset=utf-8")]
        if auth is not None:
            basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            write_headers.append(("Authorization", f"Basic {basic}"))
        elif config.token is not None:
            write_headers.append(("Authorization", headers["Authorization"]))
        if config.gzip:
            write_headers.append(("Content-Encoding", "gzip"))
        params = {"db": config.database, "precision": "ns"}
        if config.retention.name != "autogen" or not config.retention.default:
            params["rp"] = config.retention.name
        self._writes = WritePool(
            config.url,
            "/write",
            params,
            headers=write_headers,
            ssl_context=context if isinstance(context, ssl.SSLContext) else None,
            timeout=config.timeout,
            connect_timeout=min(config.timeout, 5.0),
            max_idle=max_connections,
        )

    async def prepare(self) -> None:
        cfg = self._config
        deadline = time.monotonic() + 3 * cfg.timeout
        while True:
            try:
                await self._ping()
                break
            except _TlsRefused:
                raise
            except SchemaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        if cfg.create_database:
            await self._query(f'CREATE DATABASE "{cfg.database}"')
        rp = cfg.retention
        if rp.create and rp.name != "autogen":
            shard = f" SHARD DURATION {rp.shard_duration}" if rp.shard_duration else ""
            existing = await self._query(f'SHOW RETENTION POLICIES ON "{cfg.database}"')
            names = {
                row[0]
                for result in existing.get("results", [])
                for series in result.get("series", [])
                for row in series.get("values", [])
            }
            verb = "ALTER" if rp.name in names else "CREATE"
            default = " DEFAULT" if rp.default else ""
            await self._query(
                f'{verb} RETENTION POLICY "{rp.name}" ON "{cfg.database}" '
                f"DURATION {rp.duration} REPLICATION 1{shard}{default}"
            )

    async def _ping(self) -> None:
        try:
            response = await self._client.get("/ping")
        except httpx.HTTPError as exc:
            if (tls := _tls_failure(exc)) is not None:
                # Not transient: fail the start now, naming the CA, instead of retrying.
                raise _TlsRefused(_tls_reason(self._config, tls)) from exc
            raise SchemaError(f"InfluxDB at {self._config.url} unreachable: {exc!r}") from exc
        if response.status_code != 204:
            raise SchemaError(f"InfluxDB /ping answered {response.status_code}")

    async def _query(self, q: str) -> dict[str, Any]:
        try:
            response = await self._client.post("/query", data={"q": q})
        except httpx.HTTPError as exc:
            raise SchemaError(f"{q!r} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise SchemaError(
                f"{q!r} answered {response.status_code}: {_answer_text(response.content)}"
            )
        answer: dict[str, Any] = response.json()
        for result in answer.get("results", []):
            if "error" in result:
                raise SchemaError(f"{q!r}: {result['error']}")
        return answer

    async def write(self, body: bytes) -> None:
        content = gzip.compress(body, compresslevel=1) if self._config.gzip else body
        try:
            answer = await self._writes.post(content)
        except WriteRetryable as exc:
            if (tls := _tls_failure(exc)) is not None:
                raise WriteRetryable(_tls_reason(self._config, tls)) from exc
            raise
        status = answer.status
        if status == 204:
            return
        text = _answer_text(answer.body)
        if status >= 500 or status in _RETRYABLE_4XX:
            retry_after = parse_retry_after(answer.headers.get("retry-after"))
            raise WriteRetryable(text, status=status, retry_after=retry_after)
        if status in (401, 403, 404):
            # Credentials or a missing database: an operator problem, not the data's fault.
            # Retried (never dead-lettered) so that fixing it lets the backlog drain.
            raise WriteRetryable(text, status=status)
        raise WriteRejected(text, status=status)

    async def aclose(self) -> None:
        await self._writes.aclose()
        await self._client.aclose()


class InfluxV2Sink:
    """InfluxDB 2.x / Cloud through ``influxdb-client`` (token, org, bucket).

    The client is synchronous; writes run in worker threads, at most ``max_connections`` at
    a time (the caller's semaphore). Its exceptions are translated like the v1 answers.
    """

    def __init__(self, config: InfluxConfig, *, max_connections: int) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        # InfluxConfig checked these for api v2.
        if config.token is None or not config.org or not config.bucket:
            raise SchemaError("api v2 needs token, org and bucket")
        self._config = config
        self._org: str = config.org
        self._bucket: str = config.bucket
        _ssl_context(config)  # the files exist and are usable, named by their key
        self._client = InfluxDBClient(
            url=config.url,
            token=config.token.get_secret_value(),
            org=self._org,
            timeout=int(config.timeout * 1000),
            verify_ssl=config.verify_tls,
            ssl_ca_cert=str(config.ca_file) if config.ca_file else None,
            cert_file=str(config.cert_file) if config.cert_file else None,
            cert_key_file=str(config.key_file) if config.key_file else None,
            enable_gzip=config.gzip,
            connection_pool_maxsize=max_connections + 1,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    async def prepare(self) -> None:
        try:
            ok = await asyncio.to_thread(self._client.ping)
        except Exception as exc:
            raise SchemaError(f"InfluxDB at {self._config.url} unreachable: {exc!r}") from exc
        if not ok:
            raise SchemaError(f"InfluxDB at {self._config.url} did not answer /ping")

    async def write(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            await asyncio.to_thread(
                self._write_api.write,
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=cast(Any, WritePrecision.NS),
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            headers: dict[str, str] = dict(exc.headers or {})
            message = str(exc.body or exc.reason)
            if status >= 500 or status in _RETRYABLE_4XX or status in (0, 401, 403, 404):
                raise WriteRetryable(
                    message,
                    status=status or None,
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                ) from exc
            raise WriteRejected(message, status=status) from exc
        except (Urllib3Error, OSError) as exc:
            raise WriteRetryable(f"connection: {exc!r}") from exc

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)


def make_sink(config: InfluxConfig, *, max_connections: int) -> Sink:
    """The sink for ``config.api``."""
    if config.api == "v2":
        return InfluxV2Sink(config, max_connections=max_connections)
    return InfluxV1Sink(config, max_connections=max_connections)
