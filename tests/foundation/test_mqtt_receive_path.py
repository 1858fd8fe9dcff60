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


def _publish_packet(
    topic: bytes, qos: int, mid: int, props: bytes | None, payload: bytes, v5: bool
) -> bytes:
    """A PUBLISH after its remaining length, as paho hands it over (``props``: the v5
    properties, length included)."""
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += props if props is not None else b"\x00"
    return body + payload


_PROPERTIES = st.sampled_from(
    [
        None,
        b"\x00",
        b"\x02\x01\x01",  # payload format indicator
        b"\x09\x09\x00\x06abcdef",  # correlation data (property length 9)
        b"\x03\x23\x00\x07",  # topic alias 7
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=12)),
    qos=st.integers(min_value=0, max_value=2),
    mid=st.integers(min_value=1, max_value=65535),
    props=_PROPERTIES,
    payload=st.binary(max_size=200),
    v5=st.booleans(),
    flags=st.integers(min_value=0, max_value=15),
    cut=st.integers(min_value=0, max_value=8),
)
def test_plain_publish_agrees_with_paho_or_leaves_the_packet_to_it(
    topic: bytes,
    qos: int,
    mid: int,
    props: bytes | None,
    payload: bytes,
    v5: bool,
    flags: int,
    cut: int,
) -> None:
    """What the session's own PUBLISH decoding reads is what paho decodes, for every packet
    it takes (QoS 0/1, no property, a non-empty UTF-8 topic), truncated ones included; it
    takes no other."""
    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion

    from foundation.mqtt._inbound import plain_publish

    header = 0x30 | (flags & 0x09) | qos << 1
    packet = bytearray(_publish_packet(topic, qos, mid, props, payload, v5))
    if cut:
        del packet[max(0, len(packet) - cut) :]
    plain = plain_publish(header, packet, v5)
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    if plain is None:
        taken = qos < 2 and bool(topic) and (not v5 or props in (None, b"\x00")) and not cut
        try:
            topic.decode()
        except UnicodeDecodeError:
            taken = False
        assert not taken  # an intact plain packet is never left to paho
        return
    got_topic, got_mid, start = plain
    paho = _packet.decode_publish(header, packet, protocol)
    assert got_topic == paho.topic.decode()
    assert got_mid == paho.mid
    assert bytes(packet[start:]) == paho.payload
    assert paho.properties is None or not vars(paho.properties).keys() - set(
        vars(type(paho.properties)(paho.properties.packetType))
    )


@pytest.mark.integration
def test_publishes_with_and_without_properties_arrive_the_same_on_both_paths(
    mosquitto: Mosquitto, topic_root: str
) -> None:
    """Through a real broker, QoS 0, 1 (auto and manual ack) and 2, with and without v5
    properties, on v5 and 3.1.1 sessions: every message arrives with its topic, payload,
    QoS, retain flag and properties (``None`` when it carried none), and the QoS 1 ones
    are acknowledged (a manual-ack session that acks everything gets nothing again)."""
    from foundation.mqtt import publish_properties

    def config(client_id: str = "", **kw: Any) -> SessionConfig:
        return SessionConfig(
            host=mosquitto.host, port=mosquitto.port, client_id=client_id, backoff=FAST, **kw
        )

    async def receive(version: str, manual: bool) -> None:
        root = f"{topic_root}/{version}-{manual}"
        sent = [
            (f"{root}/{qos}/{with_props}", f"{qos}{with_props}".encode() * 50, qos, with_props)
            for qos in (0, 1, 2)
            for with_props in (False, True)
        ]
        retained = (f"{root}/retained", b"r" * 70_000)  # more than one read-ahead chunk
        v5 = version == "5"
        sub_cfg = config(
            f"{topic_root}-{version}-{manual}",
            version=version,
            clean_start=False,
            manual_ack=manual,
            **({"session_expiry_s": 60, "receive_maximum": 100} if v5 else {}),
        )
        async with MqttSession(config()) as pub:
            await pub.publish(*retained, qos=1, retain=True)
        async with MqttSession(sub_cfg) as sub:
            await sub.subscribe(f"{root}/#", qos=2)
            async with MqttSession(config()) as pub:
                for topic, payload, qos, with_props in sent:
                    props = (
                        publish_properties(correlation_data=b"c-" + payload[:2])
                        if with_props
                        else None
                    )
                    await pub.publish(topic, payload, qos=qos, properties=props)
            got = []
            async for msg in sub.messages():
                got.append(msg)
                await msg.ack()
                if len(got) == len(sent) + 1:
                    break
        by_topic = {m.topic: m for m in got}
        assert len(by_topic) == len(sent) + 1
        kept = by_topic.pop(retained[0])
        assert (kept.payload, kept.qos, kept.retain, kept.properties) == (
            retained[1],
            1,
            True,
            None,
        )
        for topic, payload, qos, with_props in sent:
            m = by_topic[topic]
            assert (m.payload, m.qos, m.retain, m.dup, m.epoch) == (payload, qos, False, False, 1)
            if with_props and v5:
                assert m.correlation_data == b"c-" + payload[:2]
            else:
                assert m.properties is None
        async with MqttSession(sub_cfg) as sub:  # everything was acked: nothing again
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(sub.messages()))

    async def main() -> None:
        for version in ("5", "3.1.1"):
            for manual in (False, True):
                await receive(version, manual)

    run(main, limit=60)
