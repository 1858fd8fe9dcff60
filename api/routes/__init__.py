"""Routes: the platform's own REST and live-push endpoints, one module per domain.

Inventory and live state, history, transport, resources, live push (WebSocket/SSE), alerts,
key management, and health/metrics/vocabulary. Handlers read :class:`api._services.Services`
and answer msgspec-encoded bodies; the standards' endpoints live in :mod:`api.standards`.
"""

from fastapi import APIRouter

from api.routes import (
    _admin,
    _alerts,
    _audit,
    _commands,
    _enrolment,
    _history,
    _inventory,
    _meta,
    _resources,
    _stream,
    _transport,
)

__all__ = [
    "admin",
    "alerts",
    "audit",
    "commands",
    "enrolment",
    "history",
    "inventory",
    "meta",
    "resources",
    "stream",
    "transport",
]

inventory: APIRouter = _inventory.router
commands: APIRouter = _commands.router
enrolment: APIRouter = _enrolment.router
history: APIRouter = _history.router
transport: APIRouter = _transport.router
resources: APIRouter = _resources.router
stream: APIRouter = _stream.router
alerts: APIRouter = _alerts.router
admin: APIRouter = _admin.router
audit: APIRouter = _audit.router
meta: APIRouter = _meta.router
