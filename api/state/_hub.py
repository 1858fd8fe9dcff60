"""Live push fan-out: one event in, to every matching subscriber, never waiting for any.

::

    broker thread ─▶ event loop: Processor ─▶ Hub.publish(event)
                                                  │ for each subscriber whose filter matches:
                                                  ▼ queue.append (bounded deque, never blocks)
                               subscriber 1  [e e e e]  ─▶ its WebSocket / SSE sender task
                               subscriber 2  [e e e e e e e e  (full: oldest dropped)]

Slow-client policy: each subscriber has a queue of ``stream_queue`` events. When it is full
the **oldest** event is dropped and counted; the next event the client receives is preceded
by ``{"type": "dropped", "count": n}``, so it knows to resynchronise with a REST call. A
client whose socket accepts nothing for ``stream_send_timeout_s`` is disconnected (WebSocket
close code 1013, "try again later"). Publishing is a loop over in-memory deques: one slow or
stuck client costs the others nothing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "EXTRA_KINDS",
    "KINDS",
    "MEASUREMENT_KIND",
    "Event",
    "Hub",
    "StreamFilter",
    "Subscriber",
    "parse_filter",
]

#: Stream kinds: reading aliases for the known measurements, plus alerts and gateway status.
KINDS: Final = {
    "vehicle": "Vehicle",
    "traffic": "TrafficFlowObserved",
    "parking": "OffStreetParking",
    "air": "AirQualityObserved",
    "noise": "NoiseLevelObserved",
    "water": "WaterConsumptionObserved",
    "energy": "ThreePhaseAcMeasurement",
}
MEASUREMENT_KIND: Final = {m: k for k, m in KINDS.items()}
EXTRA_KINDS: Final = ("alert", "gateway", "other")
#: Up to this many followed devices, a payload is searched for them before it is decoded
#: (:meth:`Hub.may_follow_any`); past it, searching would cost about what decoding does.
FOLLOWED_SCAN_MAX: Final = 32


@dataclass(frozen=True, slots=True)
class Event:
    """One pushed item; ``data`` is its JSON, encoded once for every subscriber."""

    kind: str
    device: str | None
    gateway: str | None
    area: str | None
    data: bytes
    #: ``time.perf_counter()`` when it entered the hub (``smartcity_api_stream_delay``).
    published: float = field(default_factory=time.perf_counter, compare=False)


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Empty sets match everything; otherwise the event's value must be in the set."""

    kinds: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    areas: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        return self.accepts(event.kind, event.device, event.area)

    def accepts(self, kind: str, device: str | None, area: str | None) -> bool:
        """Whether an event of this kind, device and area passes (before it is built)."""
        if self.kinds and kind not in self.kinds:
            return False
        if self.devices and device not in self.devices and kind != "alert":
            return False
        return not (self.areas and area not in self.areas)


@dataclass(eq=False, slots=True)
class Subscriber:
    filter: StreamFilter
    maxlen: int
    owner: str | None = None
    queue: collections.deque[Event] = field(init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    total_dropped: int = 0

    def __post_init__(self) -> None:
        self.queue = collections.deque(maxlen=self.maxlen)

    def offer(self, event: Event) -> None:
        if len(self.queue) == self.maxlen:
            self.dropped += 1
            self.total_dropped += 1
        self.queue.append(event)
        self.ready.set()

    def take(self) -> tuple[int, list[Event]]:
        """Everything queued, and how many were dropped before it."""
        events = list(self.queue)
        self.queue.clear()
        dropped, self.dropped = self.dropped, 0
        self.ready.clear()
        return dropped, events


class Hub:
    """The set of live subscribers of one API process."""

    def __init__(self, *, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self._per_owner: dict[str, int] = {}
        self.dropped_total = 0
        #: Every device some subscriber follows, while each subscriber follows a list of
        #: devices (``None`` otherwise): a reading of any other device is wanted by nobody,
        #: known with one set lookup.
        self._devices: frozenset[str] | None = None
        #: The same as JSON strings (``b'"<id>"'``), for :meth:`may_follow_any`.
        self._needles: tuple[bytes, ...] | None = None

    def __len__(self) -> int:
        return len(self._subscribers)

    def owned_by(self, owner: str) -> int:
        return self._per_owner.get(owner, 0)

    def subscribe(
        self, stream_filter: StreamFilter, *, owner: str | None = None, limit: int | None = None
    ) -> Subscriber | None:
        """A new subscriber; ``None`` when ``owner`` (an API key) holds ``limit`` already."""
        if owner is not None:
            held = self._per_owner.get(owner, 0)
            if limit is not None and held >= limit:
                return None
            self._per_owner[owner] = held + 1
        sub = Subscriber(stream_filter, self._queue_size, owner)
        self._subscribers.add(sub)
        self._index()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub not in self._subscribers:
            return
        self._subscribers.discard(sub)
        self._index()
        if sub.owner is not None:
            left = self._per_owner.get(sub.owner, 1) - 1
            if left > 0:
                self._per_owner[sub.owner] = left
            else:
                self._per_owner.pop(sub.owner, None)

    def follows(self, device: str) -> bool:
        """Whether some subscriber may take a reading of ``device`` (False: none can, known
        with one set lookup; True: ask :meth:`wants` with the kind and area)."""
        followed = self._devices
        return followed is None or device in followed

    def may_follow_any(self, payload: bytes) -> bool:
        """Whether a reading of a followed device may be in a telemetry payload (JSON): False
        when nobody subscribes, or every subscriber follows a list of at most
        ``FOLLOWED_SCAN_MAX`` devices and none of them occurs in the bytes as a JSON string.
        Ids are plain ASCII (the contract), so a reading of one is there as ``"<id>"``
        unless written with escapes: a payload with a backslash may hold any."""
        if not self._subscribers:
            return False
        needles = self._needles
        if needles is None or b"\\" in payload:
            return True
        return any(needle in payload for needle in needles)

    def wants(self, kind: str, device: str | None, area: str | None) -> bool:
        """Whether any subscriber takes an event of this kind, device and area (skip
        building and encoding it if not: measured in bench/api.py's live run, one client
        following one device made every reading of 1,000 devices be encoded for nobody)."""
        followed = self._devices
        if followed is not None and device not in followed and kind != "alert":
            return False
        return any(s.filter.accepts(kind, device, area) for s in self._subscribers)

    def _index(self) -> None:
        filters = [s.filter for s in self._subscribers]
        if filters and all(f.devices for f in filters):
            self._devices = frozenset().union(*(f.devices for f in filters))
        else:
            self._devices = None
        devices = self._devices
        self._needles = (
            tuple(f'"{d}"'.encode() for d in sorted(devices))
            if devices is not None and len(devices) <= FOLLOWED_SCAN_MAX
            else None
        )

    def publish(self, event: Event) -> None:
        for sub in self._subscribers:
            if sub.filter.matches(event):
                before = sub.total_dropped
                sub.offer(event)
                self.dropped_total += sub.total_dropped - before


def parse_filter(
    kinds: Collection[str], devices: Collection[str], areas: Collection[str]
) -> StreamFilter:
    """Filters from repeated or comma-separated values (validated by the caller)."""

    def split(values: Collection[str]) -> frozenset[str]:
        return frozenset(v.strip() for value in values for v in value.split(",") if v.strip())

    return StreamFilter(split(kinds), split(devices), split(areas))
