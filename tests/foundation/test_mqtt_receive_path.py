"""foundation.mqtt's receive path: the read-ahead in front of paho's socket reads, and
backpressure while bytes wait in it (docs/mqtt-session.md, "Per-message cost")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation import Backoff
from foundation.mqtt import MqttSession, SessionConfig
from foundation.mqtt._readahead import READ_AHEAD_BYTES, ReadAhead
from smartcity._localstack import Mosquitto

FAST = Backoff(initial=0.05, maximum=0.3)


class Chunks:
    """A socket's recv() as the kernel answers it: the stream in the given chunks, then
    BlockingIOError (nothing there) or b"" (EOF)."""

    def __init__(self, chunks: list[bytes], eof: bool) -> None:
        self.chunks = list(chunks)
        self.eof = eof
        self.calls = 0

    def recv(self, bufsize: int) -> bytes:
        assert bufsize == READ_AHEAD_BYTES
        self.calls += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.eof:
            return b""
        raise BlockingIOError


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    asks=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60),
    eof=st.booleans(),
)
def test_read_ahead_hands_out_the_stream_in_order_and_passes_the_end_through(
    chunks: list[bytes], asks: list[int], eof: bool
) -> None:
    source = Chunks(chunks, eof)
    ahead = ReadAhead(source.recv)
    stream = b"".join(chunks)
    got = b""
    for n in asks:
        if len(got) == len(stream):
            break
        piece = ahead.recv(n)
        assert 0 < len(piece) <= n
        got += piece
        assert ahead.pending == sum(map(len, chunks[: source.calls])) - len(got)
    assert stream.startswith(got)
    if len(got) < len(stream):
        return
    assert ahead.pending == 0
    # One recv per chunk, however small paho's asks were.
    assert source.calls == len(chunks)
    if eof:
        assert ahead.recv(1) == b""
    else:
        with pytest.raises(BlockingIOError):
            ahead.recv(1)


def test_read_ahead_clear_forgets_the_buffer() -> None:
    ahead = ReadAhead(Chunks([b"abcdef"], eof=True).recv)
    assert ahead.recv(2) == b"ab"
    assert ahead.pending == 4
    ahead.clear()
    assert ahead.pending == 0
    assert ahead.recv(2) == b""


def run(main: Callable[[], Coroutine[Any, Any, None]], limit: float = 25.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await main()

    asyncio.run(bounded())


@pytest.mark.integration
def test_backpressure_resumes_with_what_was_read_ahead(
    mosquitto: Mosquitto, topic_root: str
) -> None:
    """300 queued messages (one larger than a read-ahead chunk) reach a manual-ack consumer
    that holds at most 5: each resume parses what the read-ahead already holds at once, not
    after the keepalive/2 fallback (30 s here), and nothing is lost or reordered."""
    topic = f"{topic_root}/bp"
    payloads = [b"%05d" % i + b"x" * (i % 7) * 100 for i in range(300)]
    payloads[150] = b"big" + b"y" * (3 * READ_AHEAD_BYTES)

    def config(client_id: str = "", **kw: Any) -> SessionConfig:
        return SessionConfig(
            host=mosquitto.host, port=mosquitto.port, client_id=client_id, backoff=FAST, **kw
        )

    async def main() -> None:
        sub_cfg = config(
            f"{topic_root}-bp",
            clean_start=False,
            session_expiry_s=60,
            manual_ack=True,
            receive_maximum=1000,
            max_buffered=5,
        )
        async with MqttSession(sub_cfg) as sub:
            await sub.subscribe(topic)
        async with MqttSession(config(max_inflight=400)) as pub:
            await asyncio.gather(*(pub.publish_nowait(topic, p) for p in payloads))
        got: list[bytes] = []
        async with MqttSession(sub_cfg) as sub:
            async with asyncio.timeout(10):  # far below the 30 s keepalive/2 resume
                async for msg in sub.messages():
                    assert sub.status.buffered <= 5
                    got.append(msg.payload)
                    assert await msg.ack()
                    await asyncio.sleep(0)
                    if len(got) == len(payloads):
                        break
        assert got == payloads

    run(main)
