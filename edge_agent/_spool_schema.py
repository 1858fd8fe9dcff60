"""The spool file's schema: its tables, its versions and opening a file of any version.

::

    batches  id (order), seq, created_ns, readings, payload, delivered_ns (NULL: waiting)
    meta     next_seq, dropped_batches, dropped_readings, compat_version
    state    named blobs (processor checkpoint, unsealed readings)

``PRAGMA user_version`` is the schema version that wrote the file (:data:`SCHEMA_VERSION`)
and ``meta.compat_version`` the oldest schema that may still read and write it. A release
opens an older spool and migrates it up (``_MIGRATIONS``, additive: new columns with
defaults, new tables, so ``compat_version`` stays); it opens a *newer* spool as it is (the
agent was rolled back after an update, docs/gateway-install.md) when ``compat_version``
allows, so the readings the newer release spooled are still sent, and refuses it otherwise
without touching it.

The file is in WAL mode with the configured ``synchronous`` and a small page cache
(:data:`CACHE_KIB`): rows are written once and read once, so a larger cache only holds
memory a gateway needs elsewhere.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Final

from edge_agent._errors import SpoolError

__all__ = ["CACHE_KIB", "COMPAT_VERSION", "SCHEMA_VERSION", "open_db"]

_log: Final = logging.getLogger("edge_agent")

#: Schema version this release writes (``PRAGMA user_version``; 0: before versioning).
SCHEMA_VERSION: Final = 1
#: The oldest schema version that can read and write a spool this release wrote: stays the
#: same as long as migrations are additive (an old release ignores new columns/tables).
COMPAT_VERSION: Final = 1
#: version -> SQL that migrates a spool of ``version - 1`` (version 1, the ``delivered_ns``
#: column, predates versioning and is checked by column in :func:`open_db`).
_MIGRATIONS: Final[dict[int, str]] = {}
#: SQLite page cache of the spool's connection, KiB.
CACHE_KIB: Final = 256

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    payload BLOB NOT NULL,
    delivered_ns INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 0), ('dropped_batches', 0),
    ('dropped_readings', 0);
"""
# Created after a spool of an older version got its ``delivered_ns`` column.
_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS batches_waiting ON batches (id) WHERE delivered_ns IS NULL;
CREATE INDEX IF NOT EXISTS batches_delivered ON batches (delivered_ns)
    WHERE delivered_ns IS NOT NULL;
CREATE INDEX IF NOT EXISTS batches_seq ON batches (seq);
"""


def open_db(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open (or create) the spool at ``path``, migrated to this release's schema or, when
    newer, checked usable as it is; :class:`SpoolError` when it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot open spool {path}: {exc}") from exc
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.executescript(_SCHEMA)
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            _check_newer(db, path, found)
        else:
            columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
            if "delivered_ns" not in columns:  # a spool from before retention
                db.execute("ALTER TABLE batches ADD COLUMN delivered_ns INTEGER")
            for version in range(found + 1, SCHEMA_VERSION + 1):
                if version in _MIGRATIONS:
                    db.executescript(_MIGRATIONS[version])
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('compat_version', ?)", (COMPAT_VERSION,)
            )
        db.executescript(_INDEXES)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open spool {path}: {exc}") from exc
    return db


def _check_newer(db: sqlite3.Connection, path: Path, found: int) -> None:
    """A spool written by a newer release: usable as it is if its compat version allows."""
    row = db.execute("SELECT value FROM meta WHERE key = 'compat_version'").fetchone()
    compat = found if row is None else int(row[0])
    if compat > SCHEMA_VERSION:
        db.close()
        raise SpoolError(
            f"spool {path} has schema {found}, which only releases with spool schema"
            f" >= {compat} can use (this release: {SCHEMA_VERSION}); it was left untouched:"
            " run a newer release on it"
        )
    _log.info(
        "spool written by a newer release, used as it is",
        extra={"schema": found, "compat": compat, "this_schema": SCHEMA_VERSION},
    )
