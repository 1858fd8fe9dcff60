"""The operator database: API keys, alert rules, acknowledgements, alert history (SQLAlchemy 2).

SQLite by default (a file next to the service), PostgreSQL by URL
(``postgresql+psycopg://user@host/db``). Tables are created at start when missing; the schema
is small and additive. Calls are synchronous; the app runs them with ``asyncio.to_thread``.

Keys are never stored: only ``sha256(key)`` (the key is 256 random bits, so a fast hash is
enough: there is nothing to brute-force) and a short prefix to recognise a key in listings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final, Literal

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from api._errors import ConfigError, NotFound
from api.storage._shipped_rules import _SUPERSEDED_RULES, DEFAULT_RULES

__all__ = [
    "KEY_PREFIX",
    "AlertAck",
    "AlertEvent",
    "AlertRule",
    "ApiKey",
    "Database",
    "Enrolment",
    "EnrolmentState",
    "RuleKind",
    "hash_key",
    "new_key",
]

KEY_PREFIX: Final = "sck_"
#: Gateway claim tokens (one-time, POST /v1/enrol): ``sce_`` + 43 characters (256 bits).
TOKEN_PREFIX: Final = "sce_"  # noqa: S105 (a prefix, not a secret)
RuleKind = Literal["threshold", "staleness", "congestion"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> str:
    """A fresh API key: ``sck_`` + 43 characters of URL-safe base64 (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class _Base(DeclarativeBase):
    pass


class ApiKey(_Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class AlertRule(_Base):
    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    measurement: Mapped[str | None] = mapped_column(String(64), default=None)
    field: Mapped[str | None] = mapped_column(String(64), default=None)
    op: Mapped[str | None] = mapped_column(String(2), default=None)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    ratio: Mapped[float | None] = mapped_column(Float, default=None)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AlertAck(_Base):
    __tablename__ = "alert_acks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(64), index=True)
    rule_id: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(160))
    by_key: Mapped[str] = mapped_column(String(32))
    by_name: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(String(1024), default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AlertEvent(_Base):
    """One transition of one alert episode: raised, acknowledged or resolved.

    ``(alert_id, transition)`` is unique: replicas that evaluate the same rules on the same
    data derive the same alert id (rule, subject, start) and record each transition once.
    """

    __tablename__ = "alert_events"
    __table_args__ = (UniqueConstraint("alert_id", "transition", name="uq_alert_transition"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(64))
    transition: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    rule_id: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    gateway: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str | None] = mapped_column(String(64), default=None)
    area: Mapped[str | None] = mapped_column(String(64), default=None)
    message: Mapped[str] = mapped_column(String(512))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    by_name: Mapped[str | None] = mapped_column(String(128), default=None)
    note: Mapped[str | None] = mapped_column(String(1024), default=None)


EnrolmentState = Literal["pending", "enrolled", "revoked", "expired"]


class Enrolment(_Base):
    """A gateway registered for enrolment: its claim token (hashed) and where it stands.

    ``pending`` (token issued) -> ``enrolled`` (token redeemed, broker user made) ->
    ``revoked`` (broker user deleted); a pending token past ``expires_at`` reads ``expired``.
    Registering again issues a new token (the old one stops working).
    """

    __tablename__ = "gateway_enrolments"

    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    enrolled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    client_id: Mapped[str | None] = mapped_column(String(64), default=None)

    def effective_state(self, now: dt.datetime | None = None) -> EnrolmentState:
        if self.state == "pending" and _aware(self.expires_at) <= (now or _now()):
            return "expired"
        return self.state  # type: ignore[return-value]


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands datetimes back without their zone; every one stored is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _upgrade_shipped_rules(s: Session) -> None:
    for row in s.scalars(select(AlertRule)).all():
        new = _SUPERSEDED_RULES.get((row.name, row.kind, float(row.duration_s)))
        if new is not None:
            row.name, row.duration_s = str(new["name"]), float(new["duration_s"])  # type: ignore[arg-type]


class Database:
    """The engine and the few operations the API needs."""

    def __init__(self, url: str) -> None:
        try:
            if url in ("sqlite://", "sqlite:///:memory:"):
                self.engine: Engine = create_engine(
                    url, connect_args={"check_same_thread": False}, poolclass=StaticPool
                )
            elif url.startswith("sqlite"):
                self.engine = create_engine(url, connect_args={"check_same_thread": False})
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            raise ConfigError(f"database_url {url!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self, *, seed_rules: bool = True) -> None:
        """Create missing tables; on an empty rule table, add the default rules."""
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            from pathlib import Path

            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        _Base.metadata.create_all(self.engine)
        if seed_rules:
            with self.session() as s:
                if s.scalar(select(func.count()).select_from(AlertRule)) == 0:
                    s.add_all(AlertRule(**rule) for rule in DEFAULT_RULES)
                else:
                    _upgrade_shipped_rules(s)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # -- keys -------------------------------------------------------------------------------
    def create_key(self, *, name: str, role: str) -> tuple[ApiKey, str]:
        """Store a new key; return the row and the key itself (shown once, never stored)."""
        key = new_key()
        row = ApiKey(
            id=uuid.uuid4().hex,
            name=name,
            role=role,
            prefix=key[: len(KEY_PREFIX) + 6],
            key_hash=hash_key(key),
            created_at=_now(),
        )
        with self.session() as s:
            s.add(row)
        return row, key

    def find_key(self, key_hash: str) -> ApiKey | None:
        with self.session() as s:
            return s.scalar(
                select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )

    def list_keys(self) -> Sequence[ApiKey]:
        with self.session() as s:
            return s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).all()

    def revoke_key(self, key_id: str) -> ApiKey:
        with self.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}", parameter="key_id", location="path")
            if row.revoked_at is None:
                row.revoked_at = _now()
            return row

    # -- rules ------------------------------------------------------------------------------
    def list_rules(self) -> Sequence[AlertRule]:
        with self.session() as s:
            return s.scalars(select(AlertRule).order_by(AlertRule.id)).all()

    def add_rule(self, **values: object) -> AlertRule:
        row = AlertRule(**values)
        with self.session() as s:
            s.add(row)
            s.flush()
        return row

    def update_rule(self, rule_id: int, **values: object) -> AlertRule:
        with self.session() as s:
            row = s.get(AlertRule, rule_id)
            if row is None:
                raise NotFound(f"no rule {rule_id}", parameter="rule_id", location="path")
            for key, value in values.items():
                setattr(row, key, value)
            return row

    def delete_rule(self, rule_id: int) -> None:
        with self.session() as s:
            row = s.get(AlertRule, rule_id)
            if row is None:
                raise NotFound(f"no rule {rule_id}", parameter="rule_id", location="path")
            s.delete(row)

    # -- acknowledgements ---------------------------------------------------------------------
    def add_ack(
        self, *, alert_id: str, rule_id: int, subject: str, by_key: str, by_name: str, note: str
    ) -> AlertAck:
        row = AlertAck(
            alert_id=alert_id, rule_id=rule_id, subject=subject, by_key=by_key,
            by_name=by_name, note=note, at=_now(),
        )
        with self.session() as s:
            s.add(row)
        return row

    def add_acks(
        self, *, alerts: Sequence[tuple[str, int, str]], by_key: str, by_name: str, note: str
    ) -> list[AlertAck]:
        """Acknowledge many alerts (id, rule id, subject) in one transaction, one time."""
        at = _now()
        rows = [
            AlertAck(alert_id=alert_id, rule_id=rule_id, subject=subject, by_key=by_key,
                     by_name=by_name, note=note, at=at)
            for alert_id, rule_id, subject in alerts
        ]
        with self.session() as s:
            s.add_all(rows)
        return rows

    def acks_for(self, alert_ids: Sequence[str]) -> dict[str, AlertAck]:
        if not alert_ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(AlertAck).where(AlertAck.alert_id.in_(alert_ids))).all()
        return {row.alert_id: row for row in rows}


    # -- gateway enrolment ------------------------------------------------------------------
    def register_enrolment(
        self, gateway: str, *, ttl_s: float, by: str
    ) -> tuple[Enrolment, str] | None:
        """Issue a claim token for ``gateway`` (replacing a pending one); return the row and
        the token (shown once, stored hashed), or ``None`` when it is enrolled already."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        with self.session() as s:
            row = s.get(Enrolment, gateway)
            if row is not None and row.state == "enrolled":
                return None
            if row is None:
                row = Enrolment(gateway=gateway)
                s.add(row)
            row.state, row.token_hash, row.created_at, row.created_by = (
                "pending", hash_key(token), now, by[:128])
            row.expires_at = now + dt.timedelta(seconds=ttl_s)
            row.enrolled_at = row.revoked_at = row.client_id = None
        return row, token

    def claim_enrolment(self, token: str) -> tuple[Enrolment | None, str]:
        """Redeem a claim token once: ``(row, "ok")`` moves it to ``enrolled``; else
        ``(row or None, reason)`` with reason ``unknown``, ``used``, ``expired`` or
        ``revoked``. The update is conditional, so of two concurrent claims one wins."""
        from sqlalchemy import update

        digest = hash_key(token)
        now = _now()
        with self.session() as s:
            row = s.scalar(select(Enrolment).where(Enrolment.token_hash == digest))
            if row is None:
                return None, "unknown"
            state = row.effective_state(now)
            if state != "pending":
                return row, "used" if state == "enrolled" else state
            won = s.execute(
                update(Enrolment)
                .where(Enrolment.gateway == row.gateway, Enrolment.token_hash == digest,
                       Enrolment.state == "pending")
                .values(state="enrolled", enrolled_at=now)
            )
            if not getattr(won, "rowcount", 0):
                return row, "used"
            row.state, row.enrolled_at = "enrolled", now
        return row, "ok"

    def unclaim_enrolment(self, gateway: str, token: str) -> None:
        """Undo :meth:`claim_enrolment` when the broker user could not be made, so the
        gateway can try its token again (until it expires)."""
        with self.session() as s:
            row = s.get(Enrolment, gateway)
            if row is not None and row.state == "enrolled" and row.token_hash == hash_key(token):
                row.state, row.enrolled_at = "pending", None

    def set_enrolment_client(self, gateway: str, client_id: str) -> None:
        with self.session() as s:
            row = s.get(Enrolment, gateway)
            if row is not None:
                row.client_id = client_id

    def revoke_enrolment(self, gateway: str) -> Enrolment:
        """Mark ``gateway`` revoked (its token stops working); NotFound when never
        registered."""
        with self.session() as s:
            row = s.get(Enrolment, gateway)
            if row is None:
                raise NotFound(f"gateway {gateway!r} was never registered for enrolment",
                               parameter="gateway", location="path")
            if row.state != "revoked":
                row.state, row.revoked_at = "revoked", _now()
            return row

    def enrolment(self, gateway: str) -> Enrolment | None:
        with self.session() as s:
            return s.get(Enrolment, gateway)

    def enrolments(self) -> dict[str, str]:
        """Every registered gateway's enrolment state (the fleet view reads it)."""
        now = _now()
        with self.session() as s:
            return {r.gateway: r.effective_state(now) for r in s.scalars(select(Enrolment))}

    # -- alert history ------------------------------------------------------------------------
    def record_alert_events(self, events: Sequence[dict[str, object]]) -> int:
        """Store transitions; one already stored (by this or another replica) is skipped.

        One transaction for the whole list: a query for the transitions already stored and
        one multi-row insert of the rest (a burst of alerts is one write, not a transaction
        per row holding the GIL against the event loop). When another replica stored some
        of them in between, the rows are stored one by one instead. Return how many were
        new.
        """
        if not events:
            return 0
        ids = {str(e["alert_id"]) for e in events}
        fresh: list[dict[str, object]] = []
        try:
            with self.session() as s:
                stored = s.execute(
                    select(AlertEvent.alert_id, AlertEvent.transition).where(
                        AlertEvent.alert_id.in_(ids)
                    )
                )
                known = {(alert_id, transition) for alert_id, transition in stored}
                for values in events:
                    key = (str(values["alert_id"]), str(values["transition"]))
                    if key not in known:
                        known.add(key)
                        fresh.append(values)
                if fresh:
                    s.execute(insert(AlertEvent), fresh)
        except IntegrityError:  # another replica stored one of them in between
            return self._record_each(fresh)
        return len(fresh)

    def _record_each(self, events: Sequence[dict[str, object]]) -> int:
        added = 0
        for values in events:
            try:
                with self.session() as s:
                    s.execute(insert(AlertEvent), [values])
                added += 1
            except IntegrityError:  # stored already
                continue
        return added

    def alert_history(
        self,
        *,
        since: dt.datetime,
        until: dt.datetime,
        gateway: str | None = None,
        rule_id: int | None = None,
        transition: str | None = None,
        severity: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[Sequence[AlertEvent], int]:
        """Transitions in ``[since, until)``, newest first, and how many match in all."""
        where = [AlertEvent.at >= since, AlertEvent.at < until]
        if gateway is not None:
            where.append(AlertEvent.gateway == gateway)
        if rule_id is not None:
            where.append(AlertEvent.rule_id == rule_id)
        if transition is not None:
            where.append(AlertEvent.transition == transition)
        if severity is not None:
            where.append(AlertEvent.severity == severity)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(AlertEvent).where(*where)) or 0
            rows = s.scalars(
                select(AlertEvent).where(*where)
                .order_by(AlertEvent.at.desc(), AlertEvent.id.desc())
                .offset(offset).limit(limit)
            ).all()
        return rows, total

    def prune_alert_events(self, before: dt.datetime) -> int:
        """Delete transitions older than ``before``; return how many went."""
        from sqlalchemy import delete

        with self.session() as s:
            result = s.execute(delete(AlertEvent).where(AlertEvent.at < before))
        return int(getattr(result, "rowcount", 0) or 0)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
