"""Dead-letter replay from the replicated dead-letter stream (the cluster profile).

::

    SC_DEADLETTERS (JetStream, limits retention, replicated)
      │ ephemeral pull consumer: deliver from --since (or all), no acks, R1, memory;
      │ read until the consumer has nothing pending; deleted afterwards
      ▼
    records ──▶ select (gateway, kind) ──▶ drop repeats (same refusal of the same message,
      │         e.g. one record per replica group: stage, kind, topic, payload sha256)
      │         ──▶ newest ``limit``
      ▼
    :func:`ingest._replay.replay` once per InfluxDB replica: today's checks, the worker's
    decoder and writer, bookkeeping points; refused again = reported, never re-dead-lettered

Reading the stream changes nothing in it (no acks, the consumer is ephemeral), so the replay
can run while the workers run and as often as needed. Writing a replayed reading twice
rewrites the same point (InfluxDB point identity), so each replica converges to the same
points whichever group dead-lettered the message and however often it is replayed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.js import api as js_api

from foundation import BrokerSetupError
from ingest._config import IngestConfig
from ingest._dlq_stream import deadletter_msg_id, deadletter_subject
from ingest._errors import BrokerError, ConfigError

__all__ = ["StreamRead", "parse_since", "read_stream"]

_FETCH: Final = 256
_FETCH_TIMEOUT_S: Final = 2.0
_CONNECT_TIMEOUT_S: Final = 30.0
_SINCE: Final = re.compile(r"(\d{1,6})([smhdw])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

#: ``progress(read, total)``: records read so far of the stream's records in range.
Progress = Callable[[int, int], None]


def parse_since(since: str) -> float:
    """An InfluxQL-style duration (``30m``, ``24h``, ``7d``) in seconds; :class:`ValueError`
    for anything else (the same spelling as the InfluxDB replay's ``--since``)."""
    m = _SINCE.fullmatch(since)
    if m is None:
        raise ValueError(f"not a duration: {since!r}")
    return float(int(m.group(1)) * _UNIT_S[m.group(2)])


@dataclass(slots=True)
class StreamRead:
    """What was read: the selected records as :func:`ingest._replay.replay` takes them
    (``time``, ``gateway``, ``kind``, ``record``), oldest first, and the counts."""

    stream: str
    points: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0
    #: Not in the selection (another gateway or kind).
    skipped: int = 0
    #: The same refusal of the same message again (another replica group's record, a
    #: redelivery refused again after the duplicate window).
    repeats: int = 0
    #: Not a JSON object (not a dead-letter record).
    unreadable: int = 0
    #: Left out past ``limit`` (the oldest go).
    over_limit: int = 0

    def summary(self) -> dict[str, int | str]:
        return {"stream": self.stream, "read": self.read, "selected": len(self.points),
                "skipped": self.skipped, "repeats": self.repeats,
                "unreadable": self.unreadable, "over_limit": self.over_limit}  # fmt: skip


def read_stream(
    config: IngestConfig,
    *,
    since_s: float | None = None,
    gateway: str | None = None,
    kind: str | None = None,
    limit: int = 1000,
    progress: Progress | None = None,
    timeout: float = 120.0,
) -> StreamRead:
    """Read the dead-letter stream of ``config`` (``jetstream.deadletters.stream``, reached
    with ``jetstream`` servers, credentials and TLS). :class:`BrokerError` when it cannot be
    reached or read within ``timeout`` s, :class:`ConfigError` for unusable settings."""
    stream = config.jetstream.deadletters.stream
    if stream is None:
        raise ConfigError("jetstream.deadletters.stream is null: there is no stream to read")
    if not 1 <= limit <= 100_000:
        raise ValueError(f"limit out of range: {limit}")
    try:
        return asyncio.run(_within(timeout, _read(config, stream, since_s, gateway, kind,
                                                  limit, progress)))  # fmt: skip
    except TimeoutError as exc:
        raise BrokerError(f"dead-letter stream {stream!r} not read within {timeout:.0f}s") from exc


async def _within(seconds: float, coro: Any) -> StreamRead:
    async with asyncio.timeout(seconds):
        result: StreamRead = await coro
        return result


async def _connect(config: IngestConfig) -> Any:
    js = config.jetstream
    options: dict[str, Any] = {"servers": list(js.servers), "name": "ingest-deadletter-replay",
                               "allow_reconnect": True, "max_reconnect_attempts": 5,
                               "connect_timeout": 5}  # fmt: skip
    try:
        if js.tls is not None:
            options["tls"] = js.tls.ssl_context("jetstream.tls.")
        if js.username is not None:
            options["user"] = js.username
            options["password"] = js.read_password("jetstream.password_file") or ""
    except BrokerSetupError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            return await nats.connect(**options)
    except TimeoutError as exc:
        raise BrokerError(f"no NATS server of {list(js.servers)} answered") from exc
    except (OSError, nats.errors.Error) as exc:
        raise BrokerError(f"cannot connect to {list(js.servers)}: {exc}") from exc


async def _read(
    config: IngestConfig,
    stream: str,
    since_s: float | None,
    gateway: str | None,
    kind: str | None,
    limit: int,
    progress: Progress | None,
) -> StreamRead:
    out = StreamRead(stream=stream)
    nc = await _connect(config)
    consumer: str | None = None
    try:
        jsm = nc.jsm()
        try:
            info = await jsm.stream_info(stream)
        except nats.js.errors.NotFoundError as exc:
            raise BrokerError(f"dead-letter stream {stream!r} does not exist") from exc
        if info.state.messages == 0:
            return out
        want = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE, filter_subject=deadletter_subject(config),
            inactive_threshold=60.0, num_replicas=1, mem_storage=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )  # fmt: skip
        if since_s is not None:
            want.deliver_policy = js_api.DeliverPolicy.BY_START_TIME
            want.opt_start_time = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
                seconds=since_s
            )
        created = await jsm.add_consumer(stream, config=want)
        consumer = created.name
        psub = await nc.jetstream().pull_subscribe_bind(consumer, stream=stream)
        total = int(created.num_pending)
        seen: set[str] = set()
        # Only the newest ``limit`` are kept: memory stays within limit x 64 KiB records.
        selected: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        while out.read < total:
            try:
                msgs = await psub.fetch(_FETCH, timeout=_FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
                break  # removed meanwhile (limits retention): nothing more to read
            pending = 0
            for m in msgs:
                out.read += 1
                pending = m.metadata.num_pending
                _select(out, selected, seen, m.data, m.metadata.timestamp, gateway, kind)
            if progress is not None:
                progress(out.read, total)
            if pending == 0:
                break
        out.points = list(selected)
        return out
    except nats.errors.Error as exc:
        raise BrokerError(f"reading dead-letter stream {stream!r}: {exc}") from exc
    finally:
        if consumer is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # expires anyway
                await nc.jsm().delete_consumer(stream, consumer)
        await nc.close()


def _select(
    out: StreamRead,
    selected: collections.deque[dict[str, Any]],
    seen: set[str],
    data: bytes,
    stored: datetime.datetime,
    gateway: str | None,
    kind: str | None,
) -> None:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        out.unreadable += 1
        return
    if (gateway is not None and record.get("gateway") != gateway) or (
        kind is not None and record.get("kind") != kind
    ):
        out.skipped += 1
        return
    key = deadletter_msg_id("", data)
    if key in seen:
        out.repeats += 1
        return
    seen.add(key)
    if len(selected) == selected.maxlen:
        out.over_limit += 1  # the oldest one goes
    selected.append({
        "time": stored.isoformat().replace("+00:00", "Z"),
        "gateway": record.get("gateway"),
        "kind": record.get("kind"),
        "record": data.decode("utf-8", errors="replace"),
    })  # fmt: skip
