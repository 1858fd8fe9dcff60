"""The on-disk spool: SQLite in WAL mode, the store-and-forward buffer of the uplink.

::

    seal batch ──INSERT (+ next_seq, one transaction)──▶ batches ──▶ publish ──PUBACK──▶ DELETE
                                                         (id = order)

- A batch is committed here **before** it is published and deleted only on its PUBACK, so a
  crash, a power cut (``synchronous=FULL``) or an uplink cut loses nothing: after a restart
  or a reconnect the spool is replayed in ``id`` order.
- ``seq`` is taken from the ``meta`` table in the same transaction as the batch insert, so it
  is monotonic across restarts and SIGKILL.
- Budget: the payload bytes kept are capped at ``budget_bytes``; inserting past it deletes the
  oldest batches first (policy *drop oldest*: fresh data is worth more than old data on a link
  that never comes back). Dropped batches and readings are counted in ``meta`` and reported
  in health. Freed pages are reused, so the file stays near the budget.
- State: the ``state`` table holds named blobs (the processors' checkpoint, the batcher's
  unsealed readings) that :meth:`Spool.commit` writes in the **same transaction** as the
  batches sealed with them, so batches and state always describe the same instant. State
  blobs are not counted against the budget.
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

__all__ = ["Spool", "SpoolStats", "SpooledBatch"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 0), ('dropped_batches', 0),
    ('dropped_readings', 0);
"""
_OLDEST: Final = (
    "SELECT id, seq, created_ns, readings, payload FROM batches WHERE id > ? ORDER BY id LIMIT ?"
)
_NEWEST: Final = (
    "SELECT id, seq, created_ns, readings, payload FROM batches WHERE id > ?"
    " ORDER BY id DESC LIMIT ?"
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
    batches: int
    readings: int
    bytes: int
    budget_bytes: int
    oldest_age_s: float | None
    dropped_batches: int
    dropped_readings: int
    next_seq: int


class Spool:
    """SQLite spool; a sync context manager (calls are short and run on the agent's loop)."""

    def __init__(
        self,
        path: Path,
        *,
        budget_bytes: int,
        synchronous: Literal["full", "normal"] = "full",
    ) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._readings = 0
        self._batches = 0
        self._next_seq = 0
        self.dropped_batches = 0
        self.dropped_readings = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            db.execute("PRAGMA cache_size=-1024")  # KiB: rows are written once, read once
            db.executescript(_SCHEMA)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            b, r, n = db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
                " FROM batches"
            ).fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        self._db = db
        self._bytes, self._readings, self._batches = int(b), int(r), int(n)
        self._next_seq = int(meta["next_seq"])
        self.dropped_batches = int(meta["dropped_batches"])
        self.dropped_readings = int(meta["dropped_readings"])

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
                    if self._bytes + added_b + size > self.budget_bytes:
                        self._drop_oldest(self._bytes + added_b + size - self.budget_bytes)
                    cur = db.execute(
                        "INSERT INTO batches (seq, created_ns, readings, payload)"
                        " VALUES (?,?,?,?)",
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
        """Inside a transaction: delete oldest batches until ``need`` bytes are freed."""
        freed = 0
        dropped_b = dropped_r = 0
        ids: list[int] = []
        for row_id, size, readings in self.db.execute(
            "SELECT id, LENGTH(payload), readings FROM batches ORDER BY id"
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
            " FROM batches"
        ).fetchone()
        self._bytes, self._readings, self._batches = int(b), int(r), int(n)
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        self.dropped_batches = int(meta["dropped_batches"])
        self.dropped_readings = int(meta["dropped_readings"])

    def delete(self, ids: list[int]) -> None:
        """Forget acknowledged batches (ids already gone, e.g. dropped, are ignored)."""
        if not ids:
            return
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            id_list = json.dumps(ids)
            gone = db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(readings), 0), COUNT(*)"
                " FROM batches WHERE id IN (SELECT value FROM json_each(?))",
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
        row = self.db.execute("SELECT MIN(created_ns) FROM batches").fetchone()
        oldest = None if row[0] is None else max(0.0, (time.time_ns() - row[0]) / 1e9)
        return SpoolStats(
            batches=self._batches,
            readings=self._readings,
            bytes=self._bytes,
            budget_bytes=self.budget_bytes,
            oldest_age_s=oldest,
            dropped_batches=self.dropped_batches,
            dropped_readings=self.dropped_readings,
            next_seq=self._next_seq,
        )
