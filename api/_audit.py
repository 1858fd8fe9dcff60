"""Auditing requests: which routes are audited, and the middleware that writes their entries.

The entries are stored by :mod:`api.storage._audit` and served by ``GET /v1/audit``
(:mod:`api.routes._audit`). Route modules declare and annotate their audited operations with
:func:`audited` and :func:`note` from here (route modules do not import each other).

Which operations are audited is declared on the route, ``openapi_extra=audited("key.create",
target="key_id")`` (it shows in the OpenAPI document as ``x-audit``). For every request to
such a route, :class:`AuditMiddleware` makes sure exactly one entry exists::

    request ──▶ (middleware: CURRENT = RequestAudit()) ──▶ auth ──▶ validation ──▶ handler
                                                            │403      │422          │ 2xx/4xx/5xx
    response start ◀── entry written here, before the client sees the answer ◀──────┘

- the handler wrote the entry itself (``services.audit.record``, e.g. a command that is
  ``pending`` until the gateway answers): nothing more is written;
- otherwise the middleware writes one: ``ok`` (or the handler's ``RequestAudit.result``) on
  success, ``refused: <problem detail>`` on a 4xx, ``failed: <...>`` on a 5xx;
- a request without a valid key (401) or refused by the per-key rate limit before the role
  check is not written: it names no one, and a flood of them must not fill the database.
  Their counters are in ``/metrics`` (``smartcity_api_auth_failures_total``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api._auth import Principal
from api.storage._audit import CURRENT, RequestAudit

__all__ = ["AuditMiddleware", "audited", "note"]

log = logging.getLogger("api.audit")

_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._:-]")
#: An error body larger than this is passed on without reading its detail.
_MAX_ERROR_BODY: Final = 64 * 1024
_READ_ONLY: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def audited(action: str, *, target: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` of an audited route: its action (``{param}`` is replaced by that
    path parameter, e.g. ``command.{name}``) and the path parameter naming its target."""
    return {"x-audit": {"action": action, "target": target}}


def note() -> RequestAudit:
    """The audit of the request being served: a handler sets its ``target``, ``gateway``,
    ``detail`` or ``result`` for the entry the middleware writes (outside a request: a
    throwaway)."""
    return CURRENT.get() or RequestAudit()


def _param(scope: Scope, name: str | None) -> str | None:
    if name is None:
        return None
    value = scope.get("path_params", {}).get(name)
    return None if value is None else _UNSAFE.sub("?", str(value))[:64]


def _spec(scope: Scope) -> dict[str, Any] | None:
    extra = getattr(scope.get("route"), "openapi_extra", None)
    spec = extra.get("x-audit") if isinstance(extra, dict) else None
    return spec if isinstance(spec, dict) else None


def _reason(status: int, body: bytes) -> str:
    try:
        problem = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        problem = None
    if isinstance(problem, dict):
        detail = problem.get("detail") or problem.get("title")
        if isinstance(detail, str) and detail:
            return f"{status} {detail}"
    return str(status)


class AuditMiddleware:
    """Writes the one audit entry of a request to an audited route (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _READ_ONLY:
            await self.app(scope, receive, send)
            return
        note = RequestAudit()
        token = CURRENT.set(note)
        start: Message | None = None
        held: list[Message] = []
        size = 0
        done = False

        async def forward(message: Message) -> None:
            nonlocal start, size, done
            if done:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                if message["status"] < 400:
                    done = True
                    await self._write(scope, note, message["status"], b"")
                    await send(message)
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            held.append(message)
            size += len(message.get("body", b""))
            if message.get("more_body", False) and size <= _MAX_ERROR_BODY:
                return
            done = True
            body = b"".join(m.get("body", b"") for m in held) if size <= _MAX_ERROR_BODY else b""
            await self._write(scope, note, start["status"], body)
            await send(start)
            for m in held:
                await send(m)

        try:
            await self.app(scope, receive, forward)
        except Exception:
            if not done:
                await self._write(scope, note, 500, b"")
            raise
        finally:
            CURRENT.reset(token)

    async def _write(self, scope: Scope, note: RequestAudit, status: int, body: bytes) -> None:
        spec = _spec(scope)
        if spec is None or note.recorded:
            return
        caller = scope.get("state", {}).get("caller")
        if not isinstance(caller, Principal) and status >= 400:
            return
        action = str(spec["action"])
        for name in re.findall(r"{(\w+)}", action):
            action = action.replace(f"{{{name}}}", _param(scope, name) or "")
        gateway = note.gateway or scope.get("path_params", {}).get("gateway")
        if gateway is not None and not _ID_RE.fullmatch(str(gateway)):
            gateway = None
        if status < 400:
            result = note.result or "ok"
        elif status < 500:
            result = f"refused: {_reason(status, body)}"
        else:
            result = f"failed: {_reason(status, body)}"
        services = scope["app"].state.services
        try:
            await services.audit.record(
                actor=caller if isinstance(caller, Principal) else None, action=action,
                gateway=gateway, target=note.target or _param(scope, spec.get("target")),
                detail={**note.detail, "status": status}, result=result,
            )
        except SQLAlchemyError as exc:
            # The operation's outcome stands; losing its entry is an error an operator sees.
            services.metrics.audit_failed.inc()
            log.error("audit entry not written",
                      extra={"action": action, "result": result, "error": repr(exc)})
