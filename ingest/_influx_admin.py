"""InfluxDB 1.x users for the platform: an admin, then one least-privilege user per service.

With ``auth-enabled = true`` InfluxDB 1.x accepts one unauthenticated statement, the creation
of the first admin user, and nothing else. :func:`init` makes that admin (a random password,
written to a file only root reads), the database and its retention policy; then each service
gets its own user with only what it needs:

==========  =======================  ==================================================
user        privilege on the db      why
==========  =======================  ==================================================
``ingest``  ALL (read and write)     writes readings, bookkeeping and dead letters;
                                     reads dead letters (``deadletters list/replay``)
``api``     READ                     queries only: a leaked API password writes nothing
==========  =======================  ==================================================

Neither may create or drop databases, retention policies or users (ingest's config then has
``create_database: false`` and ``retention.create: false``: :func:`init` made them).
Passwords come from a file or stdin, never from a command line; every statement is built from
validated names and escaped string literals.
"""

from __future__ import annotations

import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from foundation import InfluxQueryError, influxql

__all__ = ["ROLES", "AdminCredentials", "InfluxAdminError", "add_user", "init", "remove_user"]

_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_DURATION: Final = re.compile(r"(INF|0s|\d{1,6}[mhdw])")
ADMIN_USER: Final = "smartcity_admin"
Role = Literal["ingest", "api"]
#: service -> privilege it gets on the platform's database
ROLES: Final[dict[str, str]] = {"ingest": "ALL", "api": "READ"}


class InfluxAdminError(RuntimeError):
    """A provisioning step failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    url: str
    username: str
    password: str
    context: ssl.SSLContext | None = None

    @classmethod
    def from_file(
        cls, url: str, path: Path, context: ssl.SSLContext | None = None
    ) -> AdminCredentials:
        """The admin file :func:`init` wrote: ``username:password`` on its first line."""
        try:
            line = path.read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise InfluxAdminError(f"cannot read the admin file {path}: {exc}") from exc
        username, sep, password = line.partition(":")
        if not sep or not username or not password:
            raise InfluxAdminError(f"{path}: expected 'username:password' on the first line")
        return cls(url, username, password, context)


def _name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise InfluxAdminError(f"{what} {value!r} must match {_NAME.pattern}")
    return value


def _literal(password: str) -> str:
    """An InfluxQL string literal (single quotes; backslash and quote escaped)."""
    if not password or len(password) > 256 or any(ord(c) < 32 for c in password):
        raise InfluxAdminError("a password is 1 to 256 characters, no control characters")
    return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _run(creds: AdminCredentials, q: str, *, db: str | None = None) -> dict[str, object]:
    try:
        return influxql(creds.url, q, db=db, username=creds.username, password=creds.password,
                        context=creds.context)
    except InfluxQueryError as exc:
        # Never echo a statement that holds a password.
        text = str(exc)
        if "PASSWORD" in q:
            text = text.split(" in '", 1)[0].split(' in "', 1)[0]
        raise InfluxAdminError(text) from exc


def _users(creds: AdminCredentials) -> dict[str, bool]:
    answer = _run(creds, "SHOW USERS")
    out: dict[str, bool] = {}
    for result in answer.get("results", []):  # type: ignore[attr-defined]
        for series in result.get("series", []):
            for user, admin in series.get("values", []):
                out[str(user)] = bool(admin)
    return out


def init(
    url: str,
    admin_file: Path,
    *,
    database: str,
    retention: str = "autogen",
    duration: str = "0s",
    shard_duration: str | None = None,
    context: ssl.SSLContext | None = None,
) -> AdminCredentials:
    """Make the admin user (once: InfluxDB allows it only while it has no user), write its
    credentials to ``admin_file`` (mode 600; kept if it already works), then the database
    and, unless it is ``autogen``, its default retention policy. Idempotent."""
    _name(database, "database")
    _name(retention, "retention policy")
    for value in (duration, shard_duration or "1d"):
        if not _DURATION.fullmatch(value):
            raise InfluxAdminError(f"duration {value!r} must match {_DURATION.pattern}")
    if admin_file.exists():
        creds = AdminCredentials.from_file(url, admin_file, context)
        _users(creds)  # the file's credentials must work
    else:
        password = secrets.token_urlsafe(32)
        creds = AdminCredentials(url, ADMIN_USER, password, context)
        try:
            influxql(url, f'CREATE USER "{ADMIN_USER}" WITH PASSWORD {_literal(password)} '
                     "WITH ALL PRIVILEGES", context=context)
        except InfluxQueryError as exc:
            raise InfluxAdminError(
                "InfluxDB refused to create the first admin user: it has users already (then "
                f"write their admin's 'user:password' to {admin_file}) or auth-enabled is "
                f"off: {str(exc).split(' in ', 1)[0]}"
            ) from exc
        admin_file.parent.mkdir(parents=True, exist_ok=True)
        admin_file.touch(mode=0o600)
        admin_file.chmod(0o600)
        admin_file.write_text(f"{ADMIN_USER}:{password}\n")
    _run(creds, f'CREATE DATABASE "{database}"')
    if retention == "autogen":
        return creds
    existing = _run(creds, f'SHOW RETENTION POLICIES ON "{database}"')
    names = {
        row[0]
        for result in existing.get("results", [])  # type: ignore[attr-defined]
        for series in result.get("series", [])
        for row in series.get("values", [])
    }
    verb = "ALTER" if retention in names else "CREATE"
    shard = f" SHARD DURATION {shard_duration}" if shard_duration else ""
    _run(creds, f'{verb} RETENTION POLICY "{retention}" ON "{database}" DURATION {duration} '
                f"REPLICATION 1{shard} DEFAULT")
    return creds


def add_user(creds: AdminCredentials, role: str, password: str, *, database: str,
             username: str | None = None) -> str:
    """Create (or re-key) the user of service ``role`` with only its privilege on
    ``database``; returns the user name (``role`` unless ``username`` says otherwise)."""
    if role not in ROLES:
        raise InfluxAdminError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    user = _name(username or role, "user")
    _name(database, "database")
    if user == creds.username:
        raise InfluxAdminError(f"{user!r} is the admin")
    users = _users(creds)
    if users.get(user):
        raise InfluxAdminError(f"{user!r} is an admin user: not turned into a service user")
    secret = _literal(password)
    if user in users:
        _run(creds, f'SET PASSWORD FOR "{user}" = {secret}')
        _run(creds, f'REVOKE ALL ON "{database}" FROM "{user}"')
    else:
        _run(creds, f'CREATE USER "{user}" WITH PASSWORD {secret}')
    _run(creds, f'GRANT {ROLES[role]} ON "{database}" TO "{user}"')
    return user


def remove_user(creds: AdminCredentials, username: str) -> None:
    """Drop a service user (its requests fail with 401 from then on)."""
    user = _name(username, "user")
    if user == creds.username:
        raise InfluxAdminError(f"{user!r} is the admin")
    if user not in _users(creds):
        raise InfluxAdminError(f"no user {user!r}")
    _run(creds, f'DROP USER "{user}"')
