"""Conformance and line protocol in one pass: what ingest does to every decoded reading.

:class:`Intake` gives the same verdicts and the same lines as :meth:`Conformer.conform_all`
followed by :meth:`LineProtocolEncoder.line_list` on the kept readings, for less: both of
those look a reading's shape up in their own caches (a key of measurement, field names and
value types, built per reading), and a profile of the ingest worker showed that building it
twice was a fifth of the worker's CPU. Here one key per reading decides both::

    reading ─▶ key = (measurement, device, quality, clock, tag items, field names, value types)
               │
               ├─ key known for this gateway and ts within the clock-skew allowance
               │    ──▶ the cached line template; values and time queued (no other check)
               │
               └─ otherwise: Conformer.conform (reserved, clock, types, control characters),
                  then the series budget ──▶ refused (index, Nonconformity)
                                         ──▶ kept: encoded; the key is cached when the
                                             reading needed no coercion and has no string
                                             field (strings are checked and escaped per value)

Why a known key needs no check: everything :class:`Conformer` decides except the clock and
string values is a function of the key (measurement, names, types, tag values), and so are
the contract's name checks (ids, names, tag values, a tag key that is also a field name); a
key is cached only after a reading of it passed those, was kept as sent and its series was
admitted to the budget. So ingest decodes without the name checks and lets
:meth:`Intake.encode` run them for uncached keys only (``check_names``). The
series budget lives here (not in the conformer) so that the set of admitted series and the
cache built on it are cleared together. Pure, no I/O; not thread-safe (one per worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from telemetry._codec import check_reading_names
from telemetry._conformance import DEFAULT_MAX_CLOCK_SKEW_S, Conformer, Nonconformity
from telemetry._lineprotocol import LineProtocolEncoder
from telemetry._model import Reading

__all__ = ["Intake", "IntakeResult"]

#: Gateways remembered at once (series sets and line caches); past it all are forgotten.
_MAX_GATEWAYS: Final = 100_000
#: Line templates cached in all (~0.6 kB each); past it every gateway's cache is emptied.
_MAX_LINES: Final = 100_000
#: Line templates cached per gateway; past it that gateway's cache is emptied. A gateway
#: inventing shapes (field names, types, devices) holds at most this share of the above.
_MAX_LINES_PER_GATEWAY: Final = 20_000
_NO_LIMIT: Final = 2**63

_Series = tuple[str, str, tuple[tuple[str, str], ...]]


class IntakeResult:
    """One gateway's readings after :meth:`Intake.encode`."""

    __slots__ = ("body", "kept", "newest_ts", "refused")

    def __init__(
        self,
        body: bytes,
        kept: int,
        refused: list[tuple[int, Nonconformity]],
        newest_ts: int | None,
    ) -> None:
        #: one line per kept reading, in order, each ending in a newline (a request body);
        #: no line holds another newline (see :meth:`Intake._without_newlines`)
        self.body = body
        #: readings kept (the lines of ``body``)
        self.kept = kept
        #: ``(index in the input, why)`` per refused reading, in order
        self.refused = refused
        #: the newest kept reading's timestamp (``None``: none kept)
        self.newest_ts = newest_ts

    @property
    def lines(self) -> list[bytes]:
        """Line ``i`` (without its newline) is kept reading ``i``, always."""
        lines = self.body.split(b"\n")
        lines.pop()
        return lines


class _Gateway:
    __slots__ = ("lines", "series")

    def __init__(self) -> None:
        self.series: set[_Series] = set()
        #: line templates by (measurement, device, quality, clock, *tag items, None,
        #: *field names, *value types): the encoder's key without the gateway, flattened
        self.lines: dict[tuple[object, ...], bytes] = {}


class Intake:
    """Conform and encode readings the way ingest stores them (see the module docstring).

    ``max_series_per_gateway``: distinct series (measurement, device, tag set) one gateway may
    create (``None``: no budget), as in :meth:`Conformer.conform_all`.
    """

    __slots__ = ("_budget", "_cached", "_conformer", "_encoder", "_gateways", "_max_skew_ns")

    def __init__(
        self,
        *,
        max_clock_skew_s: float | None = DEFAULT_MAX_CLOCK_SKEW_S,
        max_series_per_gateway: int | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> None:
        self._conformer = Conformer(max_clock_skew_s=max_clock_skew_s)
        self._encoder = LineProtocolEncoder(extra_tags=extra_tags)
        self._max_skew_ns = None if max_clock_skew_s is None else int(max_clock_skew_s * 1e9)
        self._budget = max_series_per_gateway
        self._gateways: dict[str, _Gateway] = {}
        self._cached = 0  # line templates cached over all gateways

    def encode(
        self, gateway: str, readings: Sequence[Reading], now_ns: int, *,
        check_names: bool = False,
    ) -> IntakeResult:
        """Conform ``readings`` of ``gateway`` at ingest time ``now_ns`` and encode the kept.

        ``check_names``: the readings were decoded without the contract's name checks
        (``decode_batch_partial(..., reading_names=False)``); a reading whose key is not
        cached has its names checked before anything else, and the first refused name
        raises :class:`telemetry.InvalidPayload` (the caller decodes the batch again with
        the checks to learn every refused reading). Nothing is cached or admitted for that
        reading, and what was done for the readings before it is what the checked decode
        would do for them too, so the caller's second pass ends in the same state.
        """
        state = self._gateways.get(gateway)
        if state is None:
            if len(self._gateways) >= _MAX_GATEWAYS:
                self._gateways.clear()
                self._cached = 0
            state = self._gateways[gateway] = _Gateway()
        cache = state.lines
        limit = _NO_LIMIT if self._max_skew_ns is None else now_ns + self._max_skew_ns
        # The encoder's own template, string and render steps (same package): one encoder,
        # so its caches serve line_list's fallback too.
        encoder = self._encoder
        shapes: list[bytes] = []
        flat: list[object] = []
        kept: list[Reading] = []
        refused: list[tuple[int, Nonconformity]] = []
        shape, queue, push, keep = shapes.append, flat.extend, flat.append, kept.append
        newest = -1
        for index, r in enumerate(readings):
            tags = r.tags
            fields = r.fields
            ts = r.ts
            # Flat (no nested tuples to build and hash): the tag items, a None, then the
            # field names and their value types (names are str, types are not: unambiguous).
            key = (
                r.measurement,
                r.device,
                r.quality,
                r.clock,
                *tags.items(),
                None,
                *fields,
                *map(type, fields.values()),
            )
            line = cache.get(key)
            if line is None or ts > limit:
                if check_names and line is None:
                    check_reading_names(r, index)
                outcome = self._admit(gateway, state, r, now_ns)
                if isinstance(outcome, Nonconformity):
                    refused.append((index, outcome))
                    continue
                coerced = outcome is not r  # then its own line, never cached
                r = outcome
                fields = r.fields
                line = encoder._line(
                    (
                        gateway,
                        r.measurement,
                        r.device,
                        tuple(tags.items()) if tags else None,
                        tuple(fields),
                        tuple(map(type, fields.values())),
                        r.quality,
                        r.clock,
                    )
                )
                if not coerced and line is not None:
                    self._make_room(cache)
                    cache[key] = line
                    self._cached += 1
                if line is None:  # string fields: rendered here, escaped
                    shape(encoder._string_line(gateway, r))
                    push(ts)
                    keep(r)
                    newest = ts if ts > newest else newest
                    continue
            shape(line)
            queue(fields.values())
            push(ts)
            keep(r)
            if ts > newest:
                newest = ts
        body = encoder._render(shapes, flat)
        if body.count(b"\n") == len(kept):
            return IntakeResult(body, len(kept), refused, newest if kept else None)
        return self._without_newlines(gateway, len(readings), kept, refused)

    def _without_newlines(
        self, gateway: str, total: int, kept: list[Reading],
        refused: list[tuple[int, Nonconformity]],
    ) -> IntakeResult:
        """A kept reading whose line would hold a newline is refused after all: written, it
        would be two lines (a second point of the sender's making), and the body's lines
        would no longer map to the readings. Only a reading built in code can get here (the
        contract and the conformer refuse control characters in what they check; a name
        is checked by the contract only). Its series stays admitted: a bound, not a count."""
        lines = self._encoder.line_list(gateway, kept)
        gone = {index for index, _ in refused}
        kept_index = [i for i in range(total) if i not in gone]
        good: list[bytes] = []
        newest: int | None = None
        for n, (r, line) in enumerate(zip(kept, lines, strict=True)):
            if b"\n" in line:
                why = Nonconformity(
                    "control_character", "a newline in its line protocol (a name or a value)"
                )
                refused.append((kept_index[n], why))
                continue
            good.append(line)
            newest = r.ts if newest is None or r.ts > newest else newest
        refused.sort(key=lambda item: item[0])
        body = b"".join(line + b"\n" for line in good)
        return IntakeResult(body, len(good), refused, newest)

    def _make_room(self, cache: dict[tuple[object, ...], bytes]) -> None:
        """Keep the caches within their bounds before one more line template goes in."""
        if len(cache) >= _MAX_LINES_PER_GATEWAY:
            self._cached -= len(cache)
            cache.clear()
        if self._cached >= _MAX_LINES:
            for state in self._gateways.values():
                state.lines.clear()
            self._cached = 0

    def _admit(
        self, gateway: str, state: _Gateway, r: Reading, now_ns: int
    ) -> Reading | Nonconformity:
        """The conformer's verdict, then the series budget (a refused reading uses none)."""
        outcome = self._conformer.conform(r, now_ns)
        if isinstance(outcome, Nonconformity) or self._budget is None:
            return outcome
        tags = r.tags
        series = (
            r.measurement,
            r.device,
            ()
            if not tags
            else tuple(tags.items())
            if len(tags) == 1
            else tuple(sorted(tags.items())),
        )
        known = state.series
        if series not in known:
            if len(known) >= self._budget:
                return Nonconformity(
                    "series_budget",
                    f"gateway {gateway!r} writes {len(known)} series already "
                    f"(intake.max_series_per_gateway); this reading would add one",
                    "$.d",
                )
            known.add(series)
        return outcome
