"""The write path's own HTTP/1.1 connections (ingest/_http.py): against a real influxd for
what InfluxDB answers, against small asyncio servers for what a server may do to a
connection (close it while idle, answer chunked, never answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ingest._errors import WriteRetryable
from ingest._http import WritePool
from smartcity._localstack import Influxd

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _pool(url: str, params: dict[str, str], *, timeout: float = 5.0) -> WritePool:
    return WritePool(
        url,
        "/write",
        params,
        headers=[("Content-Type", "text/plain; charset=utf-8")],
        ssl_context=None,
        timeout=timeout,
        connect_timeout=2.0,
        max_idle=2,
    )


async def _request(reader: asyncio.StreamReader) -> bytes:
    """Read one request with a Content-Length body; return its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head


async def _serve(handler: Handler, run: Callable[[str], Awaitable[None]]) -> None:
    """Run ``run(url)`` against a server answering with ``handler``; every connection is
    closed afterwards."""
    tasks: set[asyncio.Task[None]] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await run(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the transports' close callbacks


def test_influxd_answers_and_the_connection_is_reused(influxd: Influxd, base_ts: int) -> None:
    influxd.create_database("http_pool")

    async def run() -> None:
        pool = _pool(influxd.url, {"db": "http_pool", "precision": "ns"})
        try:
            for i in range(3):
                answer = await pool.post(f"m,device=d v={i} {base_ts + i}\n".encode())
                assert answer.status == 204
            assert len(pool._idle) == 1  # one connection, kept alive throughout
            bad = await pool.post(b"m,device=d v=\n")
            assert bad.status == 400
            assert b"error" in bad.body
            assert (await pool.post(f"m,device=d v=9 {base_ts + 9}\n".encode())).status == 204
        finally:
            await pool.aclose()

    asyncio.run(run())
    answer = influxd.query('SELECT count("v") FROM "m"', db="http_pool")
    assert answer["results"][0]["series"][0]["values"][0][1] == 4


def test_a_connection_closed_while_idle_is_replaced_without_an_error() -> None:
    connections = 0

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()  # keep-alive promised, then closed while idle

    async def run(url: str) -> None:
        pool = _pool(url, {"db": "x"})
        try:
            for _ in range(3):
                assert (await pool.post(b"m v=1 1\n")).status == 204
                await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        finally:
            await pool.aclose()

    asyncio.run(_serve(once_then_close, run))
    assert connections == 3


def test_chunked_answers_and_retry_after_are_read() -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b'6\r\n{"erro\r\n10\r\nr":"overloaded"}\r\n0\r\n\r\n'
            )
            await writer.drain()

    async def run(url: str) -> None:
        pool = _pool(url, {"db": "x"})
        try:
            for _ in range(2):
                answer = await pool.post(b"m v=1 1\n")
                assert answer.status == 503
                assert answer.headers["retry-after"] == "7"
                assert answer.body == b'{"error":"overloaded"}'
            assert len(pool._idle) == 1
        finally:
            await pool.aclose()

    asyncio.run(_serve(busy, run))


def test_no_answer_is_a_retryable_timeout_and_the_connection_is_dropped() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await asyncio.sleep(5)

    async def run(url: str) -> None:
        pool = _pool(url, {"db": "x"}, timeout=0.3)
        try:
            with pytest.raises(WriteRetryable, match="timeout"):
                await pool.post(b"m v=1 1\n")
            assert not pool._idle
        finally:
            await pool.aclose()

    asyncio.run(_serve(silent, run))


def test_nobody_listening_is_retryable() -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = _pool(f"http://127.0.0.1:{port}", {})
        with pytest.raises(WriteRetryable, match="connection"):
            await pool.post(b"m v=1 1\n")
        await pool.aclose()

    asyncio.run(run())
