"""A live stream's sender (api.routes._stream): one frame per event in order, the dropped
notice first, a heartbeat after silence only, and a client cut off when its socket takes
nothing for the send timeout, not when it is slow but taking."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence

import pytest

from api import ApiSettings, create_app
from api._services import Services
from api.routes._stream import _pump, _SlowClient, _Watch
from api.state import Event, Subscriber, parse_filter

TIMEOUT_S = 0.3


def _services(*, heartbeat_s: float = 30.0, queue: int = 100) -> Services:
    services: Services = create_app(
        ApiSettings(
            database_url="sqlite://",
            topic_root="t",
            stream_send_timeout_s=TIMEOUT_S,
            stream_heartbeat_s=heartbeat_s,
            stream_queue=queue,
        )
    ).state.services
    return services


def _subscribe(services: Services) -> Subscriber:
    sub = services.hub.subscribe(parse_filter([], [], []))
    assert sub is not None
    return sub


def _alert(n: int) -> Event:
    return Event("alert", None, "gw", None, json.dumps({"type": "alert", "n": n}).encode())


class Socket:
    """What a transport's emit hands the socket: texts, with a delay per text, or none
    taken at all once ``stuck``."""

    def __init__(self, *, per_text_s: float = 0.0) -> None:
        self.per_text_s = per_text_s
        self.stuck = False
        self.frames: list[dict[str, object]] = []
        self._taken = asyncio.Event()

    async def emit(self, texts: Sequence[str], watch: _Watch) -> None:
        for text in texts:
            if self.stuck:
                await asyncio.Event().wait()
            if self.per_text_s:
                await asyncio.sleep(self.per_text_s)
            self.frames.append(json.loads(text))
            self._taken.set()
            watch.progress()

    async def wait_for(self, count: int, within_s: float) -> None:
        """Until ``count`` frames were taken, or ``within_s`` passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while len(self.frames) < count:
                    self._taken.clear()
                    await self._taken.wait()

    def types(self) -> list[object]:
        return [f["type"] for f in self.frames]


def test_a_client_that_takes_nothing_is_cut_off_after_the_send_timeout() -> None:
    async def main() -> float:
        services = _services()
        sub = _subscribe(services)
        socket = Socket()
        task = asyncio.create_task(_pump(services, sub, socket.emit, '{"type": "hello"}'))
        await asyncio.sleep(0.05)
        socket.stuck = True
        start = time.monotonic()
        services.hub.publish(_alert(1))
        with pytest.raises(_SlowClient):
            async with asyncio.timeout(5):
                await task
        return time.monotonic() - start

    took = asyncio.run(main())
    assert TIMEOUT_S <= took < TIMEOUT_S * 2 + 0.2


def test_a_slow_client_that_keeps_taking_is_kept() -> None:
    """Five events in one batch at 0.6 x the send timeout each: the batch takes three
    timeouts, but the socket never stalls for one."""

    async def main() -> Socket:
        services = _services()
        sub = _subscribe(services)
        socket = Socket(per_text_s=TIMEOUT_S * 0.6)
        task = asyncio.create_task(_pump(services, sub, socket.emit, '{"type": "hello"}'))
        await asyncio.sleep(0.05)
        for n in range(5):
            services.hub.publish(_alert(n))
        await socket.wait_for(6, 10)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # another's cancel is not a slow client
            await task
        return socket

    socket = asyncio.run(main())
    assert socket.types() == ["hello"] + ["alert"] * 5
    assert [f.get("n") for f in socket.frames[1:]] == [0, 1, 2, 3, 4]


def test_a_heartbeat_follows_silence_and_not_a_flow_of_events() -> None:
    async def main() -> tuple[Socket, float]:
        services = _services(heartbeat_s=0.8)
        sub = _subscribe(services)
        socket = Socket()
        task = asyncio.create_task(_pump(services, sub, socket.emit, '{"type": "hello"}'))
        for n in range(10):  # an event every 0.1 s for 1 s: no heartbeat among them
            await asyncio.sleep(0.1)
            services.hub.publish(_alert(n))
        start = time.monotonic()
        await socket.wait_for(12, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return socket, time.monotonic() - start

    socket, silence = asyncio.run(main())
    assert socket.types() == ["hello"] + ["alert"] * 10 + ["heartbeat"]
    assert 0.6 <= silence < 2.5  # 0.8 s after the last event, give or take the loop


def test_the_dropped_notice_comes_before_the_events_kept() -> None:
    async def main() -> Socket:
        services = _services(queue=2)
        sub = _subscribe(services)
        socket = Socket()
        for n in range(5):
            services.hub.publish(_alert(n))
        task = asyncio.create_task(_pump(services, sub, socket.emit, '{"type": "hello"}'))
        await socket.wait_for(4, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return socket

    socket = asyncio.run(main())
    assert socket.frames == [
        {"type": "hello"},
        {"type": "dropped", "count": 3},
        {"type": "alert", "n": 3},
        {"type": "alert", "n": 4},
    ]


def test_an_sse_client_reading_slowly_but_steadily_is_kept() -> None:
    """A real server (uvicorn waits for its buffer to drain before each write): events
    offered at ~240 kB/s to a client reading 40 kB/s, 2 s send timeout. The client falls
    behind and loses events (the dropped notice says so) but is never cut off: it takes
    something well within every stream_send_timeout_s. (Sent as one chunk per wake-up, a
    queue's worth at a time, it was cut off within seconds.)"""
    import socket
    import threading

    import uvicorn

    from api.routes._stream import _EventStream

    services: Services = create_app(ApiSettings(
        database_url="sqlite://", topic_root="t", stream_send_timeout_s=2.0,
        stream_heartbeat_s=30.0, stream_queue=1000,
    )).state.services
    rate, run_s = 40_000, 6.0
    seen: dict[str, float] = {}

    def client(port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < run_s:
            data = s.recv(1024)
            if not data:
                seen["ended"] = time.monotonic() - t0
                break
            got += len(data)
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        seen["bytes"] = got
        s.close()

    async def main() -> None:
        async def app(scope: dict[str, object], receive: object, send: object) -> None:
            if scope["type"] == "http":
                sub = _subscribe(services)
                await _EventStream(services, sub, '{"type":"hello"}')(
                    scope, receive, send  # type: ignore[arg-type]
                )

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # no autotuning
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = uvicorn.Config(app, http="h11", log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.01)
        reader = threading.Thread(target=client, args=(listener.getsockname()[1],))
        reader.start()
        pad, n = "x" * 250, 0
        while reader.is_alive():  # 800 events/s of ~300 bytes
            for _ in range(40):
                n += 1
                services.hub.publish(Event("alert", None, "gw", None, json.dumps(
                    {"type": "alert", "n": n, "pad": pad}).encode()))
            await asyncio.sleep(0.05)
        server.should_exit = True
        await serving

    asyncio.run(main())
    assert "ended" not in seen, seen
    assert services.metrics.stream_disconnected._value.get() == 0
    assert seen["bytes"] > 0.5 * rate * run_s
