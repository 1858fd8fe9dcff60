"""The on-disk spool: SQLite in WAL mode, the store-and-forward buffer of the uplink.

::

    seal batch ──INSERT (+ next_seq, one transaction)──▶ batches ──▶ publish ──PUBACK──┐
                                                         (id = order)                  │
         DELETE ◀── older than keep_delivered_s (prune) ◀── delivered (kept) ◀──────────┘
                                                            │ resend (seqs)
                                                            └──▶ waiting again ──▶ publish

- A batch is committed here **before** it is published and only marked *delivered* on its
  PUBACK, so a crash, a power cut (``synchronous=FULL``) or an uplink cut loses nothing:
  after a restart or a reconnect the *waiting* batches (``delivered_ns IS NULL``) are
  replayed in ``id`` order; delivered ones never are.
- Retention: a delivered batch is kept ``keep_delivered_s`` (0: deleted on its PUBACK) so
  the platform can ask for it again when it finds a hole in its bookkeeping (a broker can
  acknowledge a batch that reached only a non-ingest subscriber, docs/operations.md).
  :meth:`Spool.prune` deletes the expired ones; :meth:`Spool.redeliver` makes held batches
  waiting again, with their original payload and ``seq``.
- ``seq`` is taken from the ``meta`` table in the same transaction as the batch insert, so it
  is monotonic across restarts and SIGKILL.
- Budget: the payload bytes kept (waiting and delivered) are capped at ``budget_bytes``;
  inserting past it deletes **delivered batches first** (oldest delivery first: they are
  only an insurance copy, not counted as dropped), then the oldest waiting batches (policy
  *drop oldest*: fresh data is worth more than old data on a link that never comes back).
  Dropped waiting batches and readings are counted in ``meta`` and reported in health.
  Freed pages are reused, so the file stays near the budget.
- State: the ``state`` table holds named blobs (the processors' checkpoint, the batcher's
  unsealed readings) that :meth:`Spool.commit` writes in the **same transaction** as the
  batches sealed with them, so batches and state always describe the same instant. State
  blobs are not counted against the budget.
- Schema: versions, tables, migrations and opening a file are in
  :mod:`edge_agent._spool_schema`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from edge_agent._errors import SpoolError
from edge_agent._spool_schema import COMPAT_VERSION, SCHEMA_VERSION, open_db

__all__ = [
    "COMPAT_VERSION",
    "SCHEMA_VERSION",
    "Redelivery",
    "Spool",
    "SpoolStats",
    "SpooledBatch",
]

_OLDEST: Final = (
    "SELECT id, seq, created_ns, readings, payload FROM batches"
    " WHERE delivered_ns IS NULL AND id > ? ORDER BY id LIMIT ?"
)
_NEWEST: Final = (
    "SELECT id, seq, created_ns, readings, payload FROM batches"
    " WHERE delivered_ns IS NULL AND id > ? ORDER BY id DESC LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    id: int
    seq: int
    created_ns: int
    readings: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """``batches``/``readings``/``bytes``/``oldest_age_s``: waiting to be sent.
    ``delivered_*``: acknowledged batches kept for a resend request."""

    batches: int
    readings: int
    bytes: int
    budget_bytes: int
    oldest_age_s: float | None
    dropped_batches: int
    dropped_readings: int
    next_seq: int
    delivered_batches: int = 0
    delivered_bytes: int = 0
    #: Delivered batches deleted before their time to make room (not data loss).
    delivered_evicted: int = 0


@dataclass(frozen=True, slots=True)
class Redelivery:
    """What :meth:`Spool.redeliver` found for the requested seqs."""

    #: Delivered batches made waiting again (to be published again, in ``id`` order).
    requeued: list[SpooledBatch]
    #: Requested batches that were still waiting (already on their way).
    waiting: int
    #: Requested seqs the spool does not hold (never made, pruned or dropped).
    missing: list[int]

    @property
    def found(self) -> int:
        return len(self.requeued) + self.waiting


class Spool:
    """SQLite spool; a sync context manager (calls are short and run on the agent's loop)."""

    def __init__(
        self,
        path: Path,
        *,
        budget_bytes: int,
        synchronous: Literal["full", "normal"] = "full",
        keep_delivered_s: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.synchronous = synchronous
        self.keep_delivered_s = keep_delivered_s
        self._db: sqlite3.Connection | None = None
        # waiting batches (sent or not, not acknowledged yet)
        self._bytes = 0
        self._readings = 0
        self._batches = 0
        # delivered batches kept for resend requests
        self._kept_bytes = 0
        self._kept_batches = 0
        self.delivered_evicted = 0
        self._next_seq = 0
        self.dropped_batches = 0
        self.dropped_readings = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        db = open_db(self.path, self.synchronous)
        self._db = db
        try:
            self._reload_counts()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        self._next_seq = int(meta["next_seq"])

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("spool is not open")
        return self._db

    # -- writing -----------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next_seq

    def append(self, seq: int, payload: bytes, readings: int) -> int:
        """Store a batch encoded with ``seq == next_seq``; returns its spool id.

        Drops the oldest batches first if the budget would be exceeded.
        """
        return self.commit([(seq, payload, readings)])[0]

    def commit(
        self,
        batches: Sequence[tuple[int, bytes, int]],
        state: Mapping[str, bytes | bytearray | None] | None = None,
    ) -> list[int]:
        """One transaction: append ``(seq, payload, readings)`` batches (consecutive seqs from
        ``next_seq``) and set the ``state`` blobs (``None`` deletes a key); returns the ids.

        Each batch drops the oldest ones first if it would exceed the budget, as if appended
        alone.
        """
        for i, (seq, _, _) in enumerate(batches):
            if seq != self._next_seq + i:
                raise SpoolError(
                    f"batch seq {seq} is not the spool's next seq {self._next_seq + i}"
                )
        db = self.db
        ids: list[int] = []
        added_b = added_r = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for seq, payload, readings in batches:
                    size = len(payload)
                    total = self._bytes + self._kept_bytes + added_b + size
                    if total > self.budget_bytes:
                        self._drop_oldest(total - self.budget_bytes)
                    cur = db.execute(
                        "INSERT INTO batches (seq, created_ns, readings, payload) VALUES (?,?,?,?)",
                        (seq, time.time_ns(), readings, payload),
                    )
                    ids.append(int(cur.lastrowid or 0))
                    added_b += size
                    added_r += readings
                if batches:
                    db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'next_seq'",
                        (self._next_seq + len(batches),),
                    )
                for key, blob in (state or {}).items():
                    if blob is None:
                        db.execute("DELETE FROM state WHERE key = ?", (key,))
                    else:
                        db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, blob))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._reload_counts()
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write spool {self.path}: {exc}") from exc
        self._next_seq += len(batches)
        self._bytes += added_b
        self._readings += added_r
        self._batches += len(batches)
        return ids

    def load_state(self) -> dict[str, bytes]:
        """Every state blob, by key."""
        try:
            rows = self.db.execute("SELECT key, value FROM state").fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read state from {self.path}: {exc}") from exc
        return {str(k): bytes(v) for k, v in rows}

    def _drop_oldest(self, need: int) -> None:
        """Inside a transaction: delete delivered batches (oldest delivery first), then the
        oldest waiting batches, until ``need`` bytes are freed."""
        if self._kept_batches:
            kept_ids: list[int] = []
            freed_kept = 0
            for row_id, size in self.db.execute(
                "SELECT id, LENGTH(payload) FROM batches WHERE delivered_ns IS NOT NULL"
                " ORDER BY delivered_ns, id"
            ):
                if freed_kept >= need:
                    break
                kept_ids.append(row_id)
                freed_kept += size
            self.db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in kept_ids])
            self._kept_bytes -= freed_kept
            self._kept_batches -= len(kept_ids)
            self.delivered_evicted += len(kept_ids)
            need -= freed_kept
            if need <= 0:
                return
        freed = 0
        dropped_b = dropped_r = 0
        ids: list[int] = []
        for row_id, size, readings in self.db.execute(
            "SELECT id, LENGTH(payload), readings FROM batches WHERE delivered_ns IS NULL"
            " ORDER BY id"
        ):
            if freed >= need:
                break
            ids.append(row_id)
            freed += size
            dropped_b += 1
            dropped_r += readings
        self.db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in ids])
        self.db.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'dropped_batches'", (dropped_b,)
        )
        self.db.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'dropped_readings'", (dropped_r,)
        )
        self._bytes -= freed
        self._batches -= dropped_b
        self._readings -= dropped_r
        self.dropped_batches += dropped_b
        self.dropped_readings += dropped_r

    def _reload_counts(self) -> None:
        b, r, n = self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
            " FROM batches WHERE delivered_ns IS NULL"
        ).fetchone()
        self._bytes, self._readings, self._batches = int(b), int(r), int(n)
        kb, _, kn = self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
            " FROM batches WHERE delivered_ns IS NOT NULL"
        ).fetchone()
        self._kept_bytes, self._kept_batches = int(kb), int(kn)
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        self.dropped_batches = int(meta["dropped_batches"])
        self.dropped_readings = int(meta["dropped_readings"])

    def delivered(self, ids: list[int], *, now_ns: int | None = None) -> None:
        """Acknowledged batches: kept as delivered for ``keep_delivered_s``, or deleted at
        once when it is 0 (ids already gone, e.g. dropped, are ignored)."""
        if not ids:
            return
        if self.keep_delivered_s <= 0:
            self.delete(ids)
            return
        db = self.db
        id_list = json.dumps(ids)
        try:
            db.execute("BEGIN IMMEDIATE")
            gone = db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
                " FROM batches WHERE delivered_ns IS NULL"
                " AND id IN (SELECT value FROM json_each(?))",
                (id_list,),
            ).fetchone()
            db.execute(
                "UPDATE batches SET delivered_ns = ? WHERE delivered_ns IS NULL"
                " AND id IN (SELECT value FROM json_each(?))",
                (time.time_ns() if now_ns is None else now_ns, id_list),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SpoolError(f"cannot mark batches delivered in {self.path}: {exc}") from exc
        self._bytes -= int(gone[0])
        self._readings -= int(gone[1])
        self._batches -= int(gone[2])
        self._kept_bytes += int(gone[0])
        self._kept_batches += int(gone[2])

    def delete(self, ids: list[int]) -> None:
        """Forget batches for good, waiting or delivered (ids already gone are ignored)."""
        if not ids:
            return
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            id_list = json.dumps(ids)
            gone = db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
                " FROM batches WHERE delivered_ns IS NULL"
                " AND id IN (SELECT value FROM json_each(?))",
                (id_list,),
            ).fetchone()
            kept = db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
                " FROM batches WHERE delivered_ns IS NOT NULL"
                " AND id IN (SELECT value FROM json_each(?))",
                (id_list,),
            ).fetchone()
            db.execute(
                "DELETE FROM batches WHERE id IN (SELECT value FROM json_each(?))", (id_list,)
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SpoolError(f"cannot forget acknowledged batches in {self.path}: {exc}") from exc
        self._bytes -= int(gone[0])
        self._readings -= int(gone[1])
        self._batches -= int(gone[2])
        self._kept_bytes -= int(kept[0])
        self._kept_batches -= int(kept[2])

    def prune(self, *, now_ns: int | None = None) -> int:
        """Delete delivered batches older than ``keep_delivered_s``; returns how many."""
        if not self._kept_batches:
            return 0
        now = time.time_ns() if now_ns is None else now_ns
        cutoff = now - int(self.keep_delivered_s * 1e9)
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            b, _, n = db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
                " FROM batches WHERE delivered_ns IS NOT NULL AND delivered_ns <= ?",
                (cutoff,),
            ).fetchone()
            db.execute(
                "DELETE FROM batches WHERE delivered_ns IS NOT NULL AND delivered_ns <= ?",
                (cutoff,),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SpoolError(f"cannot prune delivered batches in {self.path}: {exc}") from exc
        self._kept_bytes -= int(b)
        self._kept_batches -= int(n)
        return int(n)

    def redeliver(self, seqs: Sequence[int]) -> Redelivery:
        """Make the held delivered batches with these ``seqs`` waiting again (one
        transaction) so the uplink sends them again with their original payload and seq."""
        wanted = sorted(set(seqs))
        if not wanted:
            return Redelivery([], 0, [])
        db = self.db
        seq_list = json.dumps(wanted)
        try:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT id, seq, created_ns, readings, payload, delivered_ns FROM batches"
                " WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY id",
                (seq_list,),
            ).fetchall()
            requeue = [row[0] for row in rows if row[5] is not None]
            if requeue:
                db.execute(
                    "UPDATE batches SET delivered_ns = NULL"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(requeue),),
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SpoolError(f"cannot read batches to resend from {self.path}: {exc}") from exc
        requeued = [SpooledBatch(*row[:5]) for row in rows if row[5] is not None]
        held = {row[1] for row in rows}
        moved_b = sum(len(b.payload) for b in requeued)
        self._bytes += moved_b
        self._readings += sum(b.readings for b in requeued)
        self._batches += len(requeued)
        self._kept_bytes -= moved_b
        self._kept_batches -= len(requeued)
        return Redelivery(
            requeued=requeued,
            waiting=len(rows) - len(requeued),
            missing=[s for s in wanted if s not in held],
        )

    # -- reading -----------------------------------------------------------------------------
    def oldest(self, *, after_id: int, exclude: set[int], limit: int) -> list[SpooledBatch]:
        """Batches in spool order with ``id > after_id``, skipping ``exclude``."""
        return self._select(_OLDEST, after_id, exclude, limit)

    def newest(self, *, above_id: int, exclude: set[int], limit: int) -> list[SpooledBatch]:
        """Newest-first batches with ``id > above_id``, skipping ``exclude``."""
        return self._select(_NEWEST, above_id, exclude, limit)

    def _select(self, query: str, bound: int, exclude: set[int], limit: int) -> list[SpooledBatch]:
        try:
            rows = self.db.execute(query, (bound, limit + len(exclude))).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read spool {self.path}: {exc}") from exc
        out = [SpooledBatch(*row) for row in rows if row[0] not in exclude]
        return out[:limit]

    def max_id(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM batches").fetchone()
        return int(row[0])

    def stats(self) -> SpoolStats:
        row = self.db.execute(
            "SELECT created_ns FROM batches WHERE delivered_ns IS NULL ORDER BY id LIMIT 1"
        ).fetchone()
        oldest = None if row is None else max(0.0, (time.time_ns() - row[0]) / 1e9)
        return SpoolStats(
            batches=self._batches,
            readings=self._readings,
            bytes=self._bytes,
            budget_bytes=self.budget_bytes,
            oldest_age_s=oldest,
            dropped_batches=self.dropped_batches,
            dropped_readings=self.dropped_readings,
            next_seq=self._next_seq,
            delivered_batches=self._kept_batches,
            delivered_bytes=self._kept_bytes,
            delivered_evicted=self.delivered_evicted,
        )
