"""Per-gateway bookkeeping points: which batches arrived, stored so completeness can be computed.

Every batch a worker processes adds one point to the ``ingest_batch`` measurement, written in
the same request as the batch's readings (so it exists exactly when they do)::

    ingest_batch,gateway=cab-17 seq=4711i,readings=100i,rejected=0i,dup=false,\
        worker="ingest-0",received=1732780801234000000i 1732780800123004711
                 └─ tag ─────┘ └─ fields (seq, counts, dup, worker, ingest time) ─┘ └ time ┘

(one line on the wire; broken here to fit).

- Only ``gateway`` is a tag: one series per gateway. ``worker`` is a field on purpose: a
  replay handled by another worker must land on the same point, not in a new series.
- The timestamp is derived from the batch itself, never from the ingest clock: the newest
  reading's time truncated to the millisecond plus ``seq mod 10^6`` nanoseconds. A replay
  (same gateway, same seq, same readings), whichever worker takes it, overwrites the same
  point; two different batches of one gateway collide only if their newest readings share a
  millisecond *and* their seqs are congruent modulo a million. Being device time, the point
  falls in the same shard and retention window as the readings it describes.
- ``received`` (ingest clock, ns) is informative: last writer wins.

Completeness over a window is ``count(distinct(seq))`` against ``max(seq) - min(seq) + 1``
per gateway (:func:`completeness_query`); ``distinct`` keeps it right even if a point were
ever written twice.

This is the storage contract between the ingest workers, which write these points, and their
readers (the API's completeness and gap repair, the chaos run): it lives here so that none of
them imports another. Pure string building, no I/O.
"""

from __future__ import annotations

from typing import Final

from telemetry._model import ID_RE

__all__ = [
    "BOOKKEEPING_MEASUREMENT",
    "DEADLETTER_MEASUREMENT",
    "PLATFORM_MEASUREMENT_PREFIX",
    "bookkeeping_line",
    "bookkeeping_ts",
    "completeness_query",
]

BOOKKEEPING_MEASUREMENT: Final = "ingest_batch"
#: Dead letters: what ingest refused, stored durably (``docs/ingest.md``, dead letters).
DEADLETTER_MEASUREMENT: Final = "ingest_deadletter"
#: Measurements whose names start with this are written by the platform itself; a reading
#: under such a name is refused (``telemetry.conform``), so no gateway can fix their field
#: types in a shard before the platform writes there.
PLATFORM_MEASUREMENT_PREFIX: Final = "ingest_"


def bookkeeping_ts(newest_ts: int, seq: int) -> int:
    """Deterministic point time for a batch (see the module docstring)."""
    return newest_ts - newest_ts % 1_000_000 + seq % 1_000_000


def bookkeeping_line(
    *,
    gateway: str,
    seq: int,
    newest_ts: int,
    readings: int,
    rejected: int,
    dup: bool,
    worker: str,
    received_ns: int,
) -> str:
    """One line-protocol line for a received batch (ids need no escaping: ID_RE)."""
    return (
        f"{BOOKKEEPING_MEASUREMENT},gateway={gateway} seq={seq}i,readings={readings}i,"
        f'rejected={rejected}i,dup={"true" if dup else "false"},worker="{worker}",'
        f"received={received_ns}i {bookkeeping_ts(newest_ts, seq)}\n"
    )


def completeness_query(
    *, since: str = "now() - 1h", until: str | None = None, gateway: str | None = None
) -> str:
    """InfluxQL giving, per gateway: batches received, lowest and highest seq, readings.

    Missing batches in the window = ``max - min + 1 - received``.

    ``until`` (e.g. ``now() - 10s``) ends the window a little in the past. InfluxDB 1.x reads
    each aggregate with its own iterator, so a window that batches are being written into can
    be read torn: ``count(distinct(seq))`` and ``max(seq)`` from two moments, showing batches
    missing that are not (measured: a third of the rows while 20 gateways write
    continuously; none with the window ending 2 s back). Without ``until`` the window has no
    end, so batches stamped ahead of the server's clock count too.
    """
    where = f"time >= {since}"
    if until is not None:
        where += f" AND time < {until}"
    if gateway is not None:
        if not ID_RE.fullmatch(gateway):
            raise ValueError(f"not a gateway id: {gateway!r}")
        where += f" AND \"gateway\" = '{gateway}'"
    # Not injectable: ``gateway`` matched ID_RE (no quotes); ``since``/``until`` are the caller's.
    return (
        f'SELECT count(distinct("seq")) AS "received", min("seq") AS "min_seq", '  # noqa: S608
        f'max("seq") AS "max_seq", sum("readings") AS "readings", '
        f'sum("rejected") AS "rejected" FROM "{BOOKKEEPING_MEASUREMENT}" '
        f'WHERE {where} GROUP BY "gateway"'
    )
