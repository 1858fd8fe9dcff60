"""Live push over WebSocket and Server-Sent Events, with filters and a slow-client policy.

Both transports carry the same JSON events, one per message::

    {"type": "hello", "filter": {...}, "queue": 1000, "policy": "drop-oldest"}
    {"type": "reading", "kind": "air", "reading": {"gateway": ..., "device": ..., ...}}
    {"type": "alert", "state": "raised" | "resolved" | "acknowledged", "alert": {...}}
    {"type": "gateway", "gateway": "gw-1", "state": "offline", "time": "..."}
    {"type": "dropped", "count": 17}        the queue overflowed: 17 oldest events skipped
    {"type": "heartbeat", "time": "..."}

Filters (query parameters, repeated or comma-separated): ``kind`` (vehicle, traffic, parking,
air, noise, water, energy, other, alert, gateway), ``device``, ``area``. See
``api/state/_hub.py`` for the slow-client policy (drop oldest, notify, disconnect after
``stream_send_timeout_s``).

Authentication: ``X-API-Key`` / ``Authorization: Bearer`` headers. A browser cannot set
headers on a WebSocket, so a WebSocket may send ``{"type": "auth", "key": "..."}`` as its first
message instead (the dashboard does); ``?key=`` is refused there (URLs land in proxy logs).
SSE still accepts ``?key=`` because a browser's ``EventSource`` can send nothing else; clients
that can set headers (curl, fetch streaming) should.

At most ``stream_max_per_key`` streams per key are open at once in one process; the next one
is refused (SSE: 429 problem+json; WebSocket: close 1008 with the reason) and the open ones
carry on. At most ``stream_max_total`` streams are open in one process, whichever keys hold
them (SSE: 503; WebSocket: close 1013, try again later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api._auth import Principal
from api._deps import ServicesDep, authenticate_key
from api._errors import BadParameter, ProblemError, RateLimited, UpstreamUnavailable
from api._params import AREA_PATTERN, ID_PATTERN, iso
from api._services import Services
from api.state import EXTRA_KINDS, KINDS, StreamFilter, Subscriber, parse_filter

__all__ = ["router"]

router = APIRouter(prefix="/v1/stream", tags=["live"])

_ID_RE: Final = re.compile(ID_PATTERN)
_AREA_RE: Final = re.compile(AREA_PATTERN)
_KIND_VALUES: Final = frozenset(KINDS) | frozenset(EXTRA_KINDS)
_MAX_VALUES: Final = 100
_AUTH_WAIT_S: Final = 5.0

KindQuery = Annotated[list[str], Query(description="Event kinds (repeat or comma-separate)")]
DevicesQuery = Annotated[list[str], Query(description="Device ids")]
AreasQuery = Annotated[list[str], Query(description="Areas")]
KeyQuery = Annotated[
    str | None,
    Query(description="API key for a browser's EventSource, which cannot send headers "
                      "(lands in proxy logs: prefer the X-API-Key header)"),
]
WsKeyQuery = Annotated[
    str | None,
    Query(description="Refused: send the key as a header or in the first message",
          deprecated=True),
]


def _filter(kind: list[str], device: list[str], area: list[str]) -> StreamFilter:
    f = parse_filter(kind, device, area)
    checks: tuple[tuple[str, frozenset[str], Callable[[str], bool]], ...] = (
        ("kind", f.kinds, _KIND_VALUES.__contains__),
        ("device", f.devices, lambda v: bool(_ID_RE.fullmatch(v))),
        ("area", f.areas, lambda v: bool(_AREA_RE.fullmatch(v))),
    )
    for name, values, ok in checks:
        if len(values) > _MAX_VALUES:
            raise BadParameter(f"at most {_MAX_VALUES} values", parameter=name)
        bad = sorted(v for v in values if not ok(v))
        if bad:
            allowed = f"; one of {sorted(_KIND_VALUES)}" if name == "kind" else ""
            raise BadParameter(f"invalid {name} {bad[0]!r}{allowed}", parameter=name)
    return f


def _hello(services: Services, f: StreamFilter) -> str:
    return json.dumps(
        {
            "type": "hello",
            "filter": {"kind": sorted(f.kinds), "device": sorted(f.devices),
                       "area": sorted(f.areas)},
            "queue": services.settings.stream_queue,
            "policy": "drop-oldest",
            "send_timeout_s": services.settings.stream_send_timeout_s,
        }
    )


#: A transport's way to send texts in order (each one event), calling ``watch.progress()``
#: each time the socket took something: the WebSocket sends one frame per text, SSE one
#: chunk for all of them (the same bytes on the wire as one chunk per event).
Emit = Callable[[Sequence[str], "_Watch"], Awaitable[None]]


class _Watch:
    """One stream's send timeout and heartbeat on a single timer, re-armed lazily.

    While something is being sent and the socket takes nothing for ``timeout_s``, the
    sender task is cancelled (``expired``; :func:`_pump` turns it into :class:`_SlowClient`);
    when nothing was sent for ``heartbeat_s``, the pump is woken to send a heartbeat. A
    send costs a clock read, not a timer: an ``asyncio.timeout`` per send was about 4 of 14
    µs of loop CPU per event and client (``bench/_api_live_handle.py --fanout``). The timer
    fires about once per ``timeout_s`` whatever the event rate; it is never armed more than
    ``timeout_s`` ahead, so it is never late for a send that starts after it was armed."""

    def __init__(self, sub: Subscriber, *, timeout_s: float, heartbeat_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None  # made by the sender task itself
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._sub = sub
        self._timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        #: ``loop.time()`` of the last sign of progress (a send done, one started).
        self.last = self._loop.time()
        self.sending = False
        self.beat_due = False
        self.expired = False
        self._timer = self._loop.call_at(self._next(self.last), self._check)

    def begin(self) -> None:
        self.sending = True
        self.last = self._loop.time()

    def progress(self) -> None:
        self.last = self._loop.time()

    def end(self) -> None:
        self.sending = False
        self.last = self._loop.time()

    def stop(self) -> None:
        self._timer.cancel()

    def _next(self, now: float) -> float:
        deadline = self.last + (self._timeout_s if self.sending else self._heartbeat_s)
        return min(deadline, now + self._timeout_s)

    def _check(self) -> None:
        now = self._loop.time()
        if self.sending:
            if now - self.last >= self._timeout_s:
                self.expired = True
                self._task.cancel()
                return
        elif now - self.last >= self._heartbeat_s:
            self.beat_due = True
            self.last = now
            self._sub.ready.set()
        self._timer = self._loop.call_at(self._next(now), self._check)


async def _pump(services: Services, sub: Subscriber, emit: Emit, hello: str) -> None:
    """Send ``hello``, then move events from the subscriber's queue to ``emit`` until the
    client fails, or takes nothing for ``stream_send_timeout_s`` (:class:`_SlowClient`)."""
    settings = services.settings
    watch = _Watch(sub, timeout_s=settings.stream_send_timeout_s,
                   heartbeat_s=settings.stream_heartbeat_s)
    try:
        watch.begin()
        await emit((hello,), watch)
        watch.end()
        observe, clock = services.metrics.stream_delay.observe, time.perf_counter
        while True:
            await sub.ready.wait()
            dropped, events = sub.take()
            texts = [event.data.decode() for event in events]
            if dropped:
                services.metrics.stream_dropped.inc(dropped)
                texts.insert(0, json.dumps({"type": "dropped", "count": dropped}))
            elif not texts:
                if not watch.beat_due:
                    continue
                texts.append(json.dumps({"type": "heartbeat", "time": iso(time.time_ns())}))
            watch.beat_due = False
            watch.begin()
            await emit(texts, watch)
            watch.end()
            sent = clock()
            for event in events:
                observe(sent - event.published)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        # Our own cancel (and nobody else's): the client stalled.
        if watch.expired and task is not None and task.uncancel() == 0:
            raise _SlowClient from None
        raise
    finally:
        watch.stop()


class _SlowClient(Exception):
    """The client accepted nothing within the send timeout."""


@router.websocket("/ws")
async def websocket_stream(
    websocket: WebSocket,
    kind: KindQuery = [],  # noqa: B006 - FastAPI copies defaults per request
    device: DevicesQuery = [],  # noqa: B006
    area: AreasQuery = [],  # noqa: B006
    key: WsKeyQuery = None,
) -> None:
    services: Services = websocket.app.state.services
    await websocket.accept()
    if key is not None:
        await websocket.close(code=1008, reason=_NO_URL_KEY)
        return
    try:
        stream_filter = _filter(kind, device, area)
        principal = await _ws_auth(services, websocket)
    except ProblemError as exc:
        await websocket.close(code=1008, reason=exc.detail[:120])
        return
    except (WebSocketDisconnect, TimeoutError, ValueError):
        await websocket.close(code=1008, reason="authentication required")
        return
    sub = _subscribe(services, principal, stream_filter)
    if isinstance(sub, ProblemError):
        # 1013 "try again later" when the process is full, 1008 when the key is.
        await websocket.close(code=1013 if sub.status_code == 503 else 1008,
                              reason=sub.detail[:120])
        return
    gauge = services.metrics.stream_clients.labels("websocket")
    gauge.inc()

    async def emit(texts: Sequence[str], watch: _Watch) -> None:
        for text in texts:  # one frame per event: what the protocol promises
            await websocket.send_text(text)
            watch.progress()

    async def sender() -> None:
        try:
            await _pump(services, sub, emit, _hello(services, stream_filter))
        except _SlowClient:
            services.metrics.stream_disconnected.inc()
            # The close frame may not fit either; the handler returns regardless, and the
            # socket is closed once the client reads or goes away.
            with contextlib.suppress(TimeoutError, WebSocketDisconnect, OSError):
                async with asyncio.timeout(1.0):
                    await websocket.close(code=1013, reason="slow client")
        except (WebSocketDisconnect, OSError):
            return

    async def receiver() -> None:
        try:
            while True:
                await websocket.receive_text()
        except (WebSocketDisconnect, OSError, RuntimeError):
            return

    try:
        async with asyncio.TaskGroup() as group:
            send_task = group.create_task(sender(), name="api.ws.sender")
            recv_task = group.create_task(receiver(), name="api.ws.receiver")
            send_task.add_done_callback(lambda _t: recv_task.cancel())
            recv_task.add_done_callback(lambda _t: send_task.cancel())
    finally:
        services.hub.unsubscribe(sub)
        gauge.dec()


_NO_URL_KEY: Final = "send the key as X-API-Key or in the first message, not in the URL"


def _subscribe(
    services: Services, principal: Principal, stream_filter: StreamFilter
) -> Subscriber | ProblemError:
    """A new live subscriber, or the refusal to answer: the process serves
    ``stream_max_total`` streams already (503: many keys together must not exhaust it), or
    this key holds ``stream_max_per_key`` (429)."""
    settings = services.settings
    if len(services.hub) >= settings.stream_max_total:
        services.metrics.stream_refused.inc()
        return UpstreamUnavailable(
            f"this API process serves {settings.stream_max_total} live streams already "
            f"(stream_max_total); try again later", headers={"Retry-After": "10"})
    sub = services.hub.subscribe(
        stream_filter, owner=principal.key_id, limit=settings.stream_max_per_key
    )
    if sub is None:
        services.metrics.stream_refused.inc()
        return RateLimited(
            f"this key holds {settings.stream_max_per_key} live streams already "
            f"(stream_max_per_key); close one first", headers={"Retry-After": "10"})
    return sub


async def _ws_auth(services: Services, websocket: WebSocket) -> Principal:
    presented = websocket.headers.get("x-api-key")
    auth = websocket.headers.get("authorization", "")
    if presented is None and auth.lower().startswith("bearer "):
        presented = auth[7:].strip()
    if presented is None:
        async with asyncio.timeout(_AUTH_WAIT_S):
            message: Any = json.loads(await websocket.receive_text())
        if isinstance(message, dict) and message.get("type") == "auth":
            value = message.get("key")
            presented = value if isinstance(value, str) else None
    client = websocket.client.host if websocket.client else "unknown"
    return await authenticate_key(services, presented, client)


#: SSE sends at most about this much per write (uvicorn's write buffer low-water mark).
_SSE_PIECE_BYTES: Final = 16384


async def _body(send: Send, events: list[bytes]) -> None:
    await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})


class _EventStream(Response):
    """``text/event-stream`` of one subscriber; ends when the client goes away or stalls."""

    media_type = "text/event-stream"

    def __init__(self, services: Services, sub: Subscriber, hello: str) -> None:
        super().__init__(media_type=self.media_type)
        self._services = services
        self._sub = sub
        self._hello = hello

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services, sub = self._services, self._sub
        gauge = services.metrics.stream_clients.labels("sse")
        gauge.inc()

        async def emit(texts: Sequence[str], watch: _Watch) -> None:
            # Pieces of at most ~16 KiB, progress after each: the server waits for its buffer
            # to drain before each write, so a client reading slowly but steadily must only
            # take one piece per stream_send_timeout_s, not a whole queue's worth.
            piece: list[bytes] = []
            size = 0
            for text in texts:
                event = f"data: {text}\n\n".encode()
                piece.append(event)
                size += len(event)
                if size >= _SSE_PIECE_BYTES:
                    await _body(send, piece)
                    watch.progress()
                    piece, size = [], 0
            if piece:
                await _body(send, piece)
                watch.progress()

        async def sender() -> None:
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-store"),
                            (b"x-accel-buffering", b"no"),
                        ],
                    }
                )
                await _pump(services, sub, emit, self._hello)
            except _SlowClient:
                services.metrics.stream_disconnected.inc()
            except OSError:
                return

        async def watcher() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            async with asyncio.TaskGroup() as group:
                send_task = group.create_task(sender(), name="api.sse.sender")
                watch_task = group.create_task(watcher(), name="api.sse.watcher")
                send_task.add_done_callback(lambda _t: watch_task.cancel())
                watch_task.add_done_callback(lambda _t: send_task.cancel())
        finally:
            services.hub.unsubscribe(sub)
            gauge.dec()


@router.get(
    "/sse",
    response_model=None,
    summary="Server-Sent Events stream of readings, alerts and gateway status",
    responses={200: {"description": "An event stream; each event's data is one JSON object",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def sse_stream(
    request: Request,
    services: ServicesDep,
    kind: KindQuery = [],  # noqa: B006
    device: DevicesQuery = [],  # noqa: B006
    area: AreasQuery = [],  # noqa: B006
    key: KeyQuery = None,
) -> Response:
    presented = key or request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if presented is None and auth.lower().startswith("bearer "):
        presented = auth[7:].strip()
    client = request.client.host if request.client else "unknown"
    principal = await authenticate_key(services, presented, client)
    stream_filter = _filter(kind, device, area)
    sub = _subscribe(services, principal, stream_filter)
    if isinstance(sub, ProblemError):
        raise sub
    return _EventStream(services, sub, _hello(services, stream_filter))
