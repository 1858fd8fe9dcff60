"""The write transaction: line-protocol parts in; which were stored and which refused out.

::

    write([part 0, part 1, ..., part n])        one part = one message's lines, a list
      │ POST all parts in one body                 (each line without its newline)
      ├─ 204 ──────────────────────────────────▶ accepted: every part
      ├─ 5xx/429/timeout/connection ─▶ wait Backoff.delay(attempt) (at least Retry-After,
      │                                capped at 300 s), POST again, forever
      └─ 400 (WriteRejected) ─▶ bisect by parts: POST each half (each retried as above);
                                a half with one part left is bisected by lines; every
                                line InfluxDB still refuses alone is reported with its reason

Like a Telegraf buffer transaction, the caller learns which parts were accepted and which
lines were refused; nothing else happens to them here: acks and dead letters are the
caller's. The call returns only with a verdict for every part, so it may take as long as
InfluxDB stays unavailable (cancel it to give up; nothing is then reported accepted).

Parts are lists of lines and bisection works on those lists: a body is never cut at
newlines again (a value that held one would shift every index after it).

Rewriting the good half of a refused body is harmless: InfluxDB 1.x may already have stored
it (``partial write``), and a point is identified by measurement, tag set and timestamp.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from foundation import Backoff
from ingest._config import RetryConfig
from ingest._errors import WriteRejected, WriteRetryable
from ingest._metrics import IngestMetrics, Tally
from ingest._sink import Sink

__all__ = ["RefusedLine", "RefusedPart", "WriteResult", "Writer", "backoff_for"]

log = logging.getLogger("ingest")

#: A Retry-After longer than this is not believed.
_MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True, slots=True)
class RefusedLine:
    """A line InfluxDB refused on its own: its number within its part, the reason, the line
    (without its newline)."""

    index: int
    reason: str
    line: bytes


@dataclass(frozen=True, slots=True)
class RefusedPart:
    """A part InfluxDB refused (400), bisected down to the lines it still refuses.

    ``status`` and ``message`` are InfluxDB's answer to the part's last request as a whole;
    the lines not in ``lines`` were stored.
    """

    index: int
    status: int | None
    message: str
    line_count: int
    lines: list[RefusedLine]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The verdict on every part of a write: stored whole, or partly refused."""

    accepted: Sequence[int]
    refused: list[RefusedPart]


def _body(parts: Sequence[bytes]) -> bytes:
    """One request body: the parts (each a body of lines ending in newlines) in order."""
    return b"".join(parts)


def _lines_body(lines: Sequence[bytes]) -> bytes:
    """One request body of ``lines`` (each without its newline)."""
    return b"\n".join(lines) + b"\n"


def backoff_for(retry: RetryConfig) -> Backoff:
    """The retry schedule of ``batch.retry``: attempt ``n`` (from 0) waits between half and
    all of ``min(max_delay, initial_delay * multiplier**n)``."""
    return Backoff(
        initial=min(retry.initial_delay, retry.max_delay),
        maximum=retry.max_delay,
        multiplier=retry.multiplier,
        jitter=0.5,
    )


class Writer:
    """Writes batches through a :class:`~ingest._sink.Sink` until each part has a verdict.

    Reports to ``metrics`` (writes, durations, retries by reason) and counts retries in
    ``tally.write_retries``.
    """

    def __init__(
        self,
        sink: Sink,
        backoff: Backoff,
        *,
        metrics: IngestMetrics,
        tally: Tally,
        worker: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._sink = sink
        self._backoff = backoff
        self._metrics = metrics
        self._tally = tally
        self._worker = worker
        self._sleep = sleep
        # Its own generator: jitter never touches the global random state.
        self._rng = rng if rng is not None else random.Random()

    async def write(self, parts: Sequence[bytes]) -> WriteResult:
        """Write ``parts`` (each a body: lines ending in a newline); on a refusal the parts
        and then the lines of a refused part are bisected to find what InfluxDB refuses."""
        if not parts:
            return WriteResult(accepted=(), refused=[])
        try:
            await self.write_body(_body(parts))
        except WriteRejected as exc:
            accepted: list[int] = []
            refused: list[RefusedPart] = []
            await self._bisect_parts(parts, list(range(len(parts))), exc, accepted, refused)
            return WriteResult(accepted=accepted, refused=refused)
        return WriteResult(accepted=range(len(parts)), refused=[])

    async def write_body(self, body: bytes) -> None:
        """Write until InfluxDB answers 204; raise only :class:`WriteRejected`."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._sink.write(body)
            except WriteRetryable as exc:
                reason = str(exc.status) if exc.status is not None else "connection"
                self._tally.write_retries += 1
                self._metrics.write_retries.labels(reason).inc()
                wait = self._backoff.delay(attempt, self._rng)
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, _MAX_RETRY_AFTER))
                attempt += 1
                if attempt & (attempt - 1) == 0:  # after 1, 2, 4, 8... failed attempts
                    log.warning(
                        "write failed, retrying",
                        extra={
                            "worker": self._worker,
                            "error": str(exc),
                            "attempt": attempt,
                            "wait_s": round(wait, 3),
                        },
                    )
                await self._sleep(wait)
                continue
            self._metrics.writes.inc()
            self._metrics.write_duration.observe(time.monotonic() - started)
            if attempt:
                log.info(
                    "write succeeded after retries",
                    extra={"worker": self._worker, "attempts": attempt + 1},
                )
            return

    async def _bisect_parts(
        self,
        parts: Sequence[bytes],
        indices: list[int],
        exc: WriteRejected,
        accepted: list[int],
        refused: list[RefusedPart],
    ) -> None:
        """``indices`` were refused together with ``exc``: write what InfluxDB takes."""
        if len(indices) == 1:
            refused.append(await self._bisect_part(indices[0], parts[indices[0]], exc))
            return
        half = len(indices) // 2
        for group in (indices[:half], indices[half:]):
            try:
                await self.write_body(_body([parts[i] for i in group]))
            except WriteRejected as sub_exc:
                await self._bisect_parts(parts, group, sub_exc, accepted, refused)
            else:
                accepted.extend(group)

    async def _bisect_part(self, index: int, part: bytes, exc: WriteRejected) -> RefusedPart:
        lines = part.split(b"\n")
        lines.pop()
        found: list[tuple[int, str]] = []
        await self._bisect_lines(lines, list(range(len(lines))), exc, found)
        return RefusedPart(
            index=index,
            status=exc.status,
            message=exc.message,
            line_count=len(lines),
            lines=[RefusedLine(n, reason, lines[n]) for n, reason in found],
        )

    async def _bisect_lines(
        self,
        lines: Sequence[bytes],
        numbers: list[int],
        exc: WriteRejected,
        found: list[tuple[int, str]],
    ) -> None:
        if len(numbers) <= 1:
            found.extend((n, exc.message) for n in numbers)
            return
        half = len(numbers) // 2
        for group in (numbers[:half], numbers[half:]):
            try:
                await self.write_body(_lines_body([lines[i] for i in group]))
            except WriteRejected as sub_exc:
                await self._bisect_lines(lines, group, sub_exc, found)
