"""Gateway provisioning: register (claim token), enrol (token -> broker credentials), revoke.

::

    engineer ── POST /v1/gateways/{id}/enrolment ──▶ token (once; stored hashed; expires)
                                    │ carried to the cabinet
    gateway ─── POST /v1/enrol {token} ──▶ claim (once) ──▶ broker user {id}, fresh random
       (smartcity edge enroll)          password, client id edge-{id}, its own topics only
                 ◀── host, port, hosts, protocol, CA, username, password, client id ──┘
    engineer ── DELETE /v1/gateways/{id}/enrolment ──▶ broker user deleted (its connection
                                    is dropped) ──▶ state revoked ──▶ live inventory: offline,
                                    reason "revoked" (pushed as a status change is) ──▶
                                    retained death {"reason": "revoked"} on its status topic

The broker user is made by ``enrolment.dynsec`` (mosquitto's dynamic security: user, role
``gateway:{id}``, client id pinned; :mod:`api._dynsec`) or ``enrolment.nats`` (the cluster
profile: an entry in the replicated KV bucket that every node's ``smartcity nats
users-sync`` renders; gateways speak MQTT 3.1.1; :mod:`api._nats_users`).

``POST /v1/enrol`` takes no API key: the claim token is the credential. It is rate-limited
per client address (``enrolment.rate_per_min``) and its refusals are counted
(``smartcity_api_enrol_refused_total{reason}``). Every operation leaves one audit entry
(``gateway.register``, ``gateway.enroll``, ``gateway.revoke``); a token nobody issued
names no gateway and is only counted.

A revoked gateway sends no death: mosquitto publishes no will for a client that dynamic
security removes, and a NATS reload closes the connection without one. So the revocation
itself marks the gateway offline (reason ``revoked``) in this API's live inventory, pushes
the ``gateway`` event to live subscribers, and publishes the death the gateway did not:
retained, on its status topic, in the gateway's own wire form with ``reason: "revoked"``.
Every other API replica (and one started later: the broker keeps it) takes the gateway
offline from it as from a will; the gateway's next birth (after it is enrolled again)
replaces it. The API's broker user may publish on status topics for this (provision.sh's
``smartcity-api`` role; the cluster's ``api`` service user holds the whole account); a
gateway still publishes only on its own. The death is published after the broker user is
gone, so nothing the gateway sent can land after it. If the broker does not take it, the
revocation stands (user removed, state revoked) and the answer is 503 saying so: repeating
the DELETE publishes it again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import secrets
import time
from typing import Annotated, Final

import msgspec
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api._audit import audited, note
from api._deps import Engineer, ServicesDep, Viewer
from api._encoding import doc, json_response
from api._errors import (
    BadParameter,
    NotFound,
    ProblemError,
    RateLimited,
    Unauthorized,
    UpstreamUnavailable,
)
from api._nats_users import GatewayUsers, NatsUsers
from api._params import GatewayPath
from api._services import Services
from api.storage import Enrolment
from telemetry import Death, TopicError, check_cluster_id, encode_message

__all__ = ["router"]

log: Final = logging.getLogger("api")

#: Gateway ids refused at registration: the services' client ids (``ingest-N``, ``api-N``).
RESERVED_PREFIXES: Final = ("ingest-", "api-")
#: How long a revocation waits for the broker to take the retained death.
_PUBLISH_WAIT_S: Final = 5.0

router = APIRouter(prefix="/v1", tags=["provisioning"])


class EnrolmentConflict(ProblemError):
    status = 409
    slug = "enrolment-conflict"
    title = "The gateway is enrolled already"


class TokenRefused(ProblemError):
    status = 403
    slug = "claim-token-refused"
    title = "The claim token cannot be used"


class EnrolmentOut(msgspec.Struct):
    gateway: str
    #: pending (token issued), enrolled, revoked, expired (token not redeemed in time).
    state: str
    created_at: str
    created_by: str
    expires_at: str
    enrolled_at: str | None
    revoked_at: str | None
    client_id: str | None


class Registered(EnrolmentOut):
    #: The one-time claim token: shown this once, never stored (only its hash).
    token: str = ""


class BrokerOut(msgspec.Struct):
    host: str
    port: int
    #: Further ``host:port`` addresses to try in order after ``host:port`` (cluster nodes).
    hosts: list[str]
    #: ``mqtt5`` (mosquitto) or ``mqtt311`` (the NATS cluster speaks 3.1.1 only).
    protocol: str
    tls: bool
    #: The CA certificate (PEM) to trust at the broker; null: the system store (or no TLS).
    ca_pem: str | None
    topic_root: str


class Credentials(msgspec.Struct):
    gateway: str
    username: str
    password: str
    client_id: str
    broker: BrokerOut


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _users(services: Services) -> GatewayUsers | None:
    """The broker's authorisation that makes gateway users (``enrolment.dynsec`` or
    ``enrolment.nats``); ``None``: neither is configured."""
    if services.dynsec is not None:
        return services.dynsec
    nats = services.settings.enrolment.nats
    return None if nats is None else NatsUsers(nats)


async def _mark_revoked(services: Services, gateway: str, *, enrolled: bool) -> bool:
    """The death the broker does not send: ``gateway`` offline, reason ``revoked``, in this
    API's live inventory at once (a gateway it does not hold is not added), the ``gateway``
    event pushed when its state changed; then, for a gateway that was enrolled (or revoked:
    a repeated DELETE) or that this API has seen, the same death retained on its status
    topic for every replica. Whether it was published; :class:`UpstreamUnavailable` when
    the broker does not take it."""
    now = time.time_ns()
    death = Death(gw=gateway, ts=now, reason="revoked")
    known = gateway in services.inventory.gateways
    if known:
        services.apply_status(gateway, death, now)
    if not (known or enrolled):
        return False  # never connected: nothing shows it online anywhere
    topic = services.broker.topics.status(gateway)
    try:
        await services.broker.publish(
            topic, encode_message(death), qos=1, retain=True, wait_s=_PUBLISH_WAIT_S
        )
    except UpstreamUnavailable as exc:
        log.error("revoked gateway's death not published",
                  extra={"gateway": gateway, "topic": topic, "error": exc.detail})
        raise UpstreamUnavailable(
            f"gateway {gateway!r} is revoked (broker user removed, token refused), but its "
            f"offline status could not be published on {topic} ({exc.detail}): other API "
            "replicas show it online until it goes stale; repeat the DELETE"
        ) from exc
    return True


def _out(row: Enrolment) -> EnrolmentOut:
    return EnrolmentOut(
        row.gateway,
        row.effective_state(),
        _iso(row.created_at) or "",
        row.created_by,
        _iso(row.expires_at) or "",
        _iso(row.enrolled_at),
        _iso(row.revoked_at),
        row.client_id,
    )


@router.post(
    "/gateways/{gateway}/enrolment",
    response_model=None,
    status_code=201,
    responses=doc(Registered, "Registered; `token` is shown this once", status=201),
    summary="Register a gateway for enrolment: a one-time claim token (engineer)",
    openapi_extra=audited("gateway.register"),
)
async def register(services: ServicesDep, caller: Engineer, gateway: GatewayPath) -> Response:
    if gateway.startswith(RESERVED_PREFIXES):
        # Ids the services' client ids are made of (ingest-N, api-N; provision.sh refuses
        # them too): on the certificate listener a gateway's id is its client id.
        raise BadParameter(
            f"gateway id {gateway!r} is reserved for the services",
            parameter="gateway",
            location="path",
        )
    if services.settings.enrolment.nats is not None:
        try:  # the cluster's subjects: refused now, not when the gateway comes to enrol
            check_cluster_id("gateway id", gateway)
        except TopicError as exc:
            raise BadParameter(exc.reason, parameter="gateway", location="path") from exc
    done = await asyncio.to_thread(
        services.db.register_enrolment,
        gateway,
        ttl_s=services.settings.enrolment.token_ttl_s,
        by=caller.name,
    )
    if done is None:
        raise EnrolmentConflict(
            f"gateway {gateway!r} is enrolled; revoke it first (DELETE .../enrolment)"
        )
    row, token = done
    note().detail = {"expires_at": _iso(row.expires_at)}
    out = _out(row)
    return json_response(
        Registered(**{f: getattr(out, f) for f in out.__struct_fields__}, token=token),
        status=201,
    )


@router.get(
    "/gateways/{gateway}/enrolment",
    response_model=None,
    responses=doc(EnrolmentOut),
    summary="A gateway's enrolment state",
)
async def show(services: ServicesDep, _caller: Viewer, gateway: GatewayPath) -> Response:
    row = await asyncio.to_thread(services.db.enrolment, gateway)
    if row is None:
        raise NotFound(
            f"gateway {gateway!r} was never registered for enrolment",
            parameter="gateway",
            location="path",
        )
    return json_response(_out(row))


@router.delete(
    "/gateways/{gateway}/enrolment",
    response_model=None,
    responses=doc(EnrolmentOut),
    summary="Revoke a gateway: delete its broker user, refuse its token (engineer)",
    openapi_extra=audited("gateway.revoke"),
)
async def revoke(services: ServicesDep, _caller: Engineer, gateway: GatewayPath) -> Response:
    row = await asyncio.to_thread(services.db.enrolment, gateway)
    if row is None:
        raise NotFound(
            f"gateway {gateway!r} was never registered for enrolment",
            parameter="gateway",
            location="path",
        )
    was = row.effective_state()
    users = _users(services)
    if users is not None:
        # Always, not only when enrolled: a user made by hand (provision.sh) goes too.
        await users.remove_gateway(gateway)
        if await users.has_gateway(gateway):
            raise UpstreamUnavailable(f"the broker still has user {gateway!r}")
    elif was == "enrolled":
        raise UpstreamUnavailable(
            "neither enrolment.dynsec nor enrolment.nats is "
            "configured: the gateway's broker user cannot be removed"
        )
    row = await asyncio.to_thread(services.db.revoke_enrolment, gateway)
    note().detail = {"was": was, "broker_user_removed": users is not None}
    if users is not None:  # its connection is gone (no broker user, no connection)
        published = await _mark_revoked(
            services, gateway, enrolled=was in ("enrolled", "revoked")
        )
        note().detail["offline_published"] = published
    return json_response(_out(row))


class EnrolBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(min_length=1, max_length=128)]


def _broker(services: Services) -> BrokerOut:
    enrol, mqtt = services.settings.enrolment, services.settings.mqtt
    ca_pem = None
    if enrol.broker_ca_file is not None:
        try:
            ca_pem = enrol.broker_ca_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise UpstreamUnavailable(f"enrolment.broker_ca_file: {exc}") from exc
    hosts = enrol.broker_hosts
    if hosts is None:  # the API's own addresses, unless broker_host says otherwise
        hosts = mqtt.hosts if enrol.broker_host is None else ()
    return BrokerOut(
        host=enrol.broker_host or mqtt.host,
        port=enrol.broker_port or mqtt.port,
        hosts=list(hosts),
        protocol="mqtt311" if enrol.nats is not None else mqtt.protocol,
        tls=enrol.broker_tls or ca_pem is not None,
        ca_pem=ca_pem,
        topic_root=services.settings.topic_root,
    )


async def _refused(services: Services, row: Enrolment | None, reason: str) -> ProblemError:
    services.metrics.enrol_refused.labels(reason).inc()
    if row is None:  # names no gateway: counted only (a flood must not fill the trail)
        return Unauthorized("unknown claim token", parameter="token", location="body")
    await services.audit.record(
        actor=None, action="gateway.enroll", gateway=row.gateway, result=f"refused: token {reason}"
    )
    return TokenRefused(
        f"this claim token is {reason}; ask for a new one", parameter="token", location="body"
    )


@router.post(
    "/enrol",
    response_model=None,
    responses=doc(Credentials),
    summary="Redeem a claim token for the gateway's broker credentials (no API key)",
)
async def enrol(
    services: ServicesDep, request: Request, body: Annotated[EnrolBody, Body()]
) -> Response:
    client = request.client.host if request.client else "unknown"
    wait = services.enrol_limiter.take(client)
    if wait:
        services.metrics.enrol_refused.labels("limited").inc()
        raise RateLimited(
            "too many enrolment attempts from this address",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    users = _users(services)
    if users is None:  # like every feature left unconfigured here (GTFS...): 404
        raise NotFound(
            "enrolment is not configured on this API (enrolment.dynsec or enrolment.nats)"
        )
    broker = _broker(services)
    row, reason = await asyncio.to_thread(services.db.claim_enrolment, body.token)
    if row is None or reason != "ok":
        raise await _refused(services, row, reason)
    gateway = row.gateway
    password = secrets.token_urlsafe(24)
    try:
        client_id = await users.add_gateway(gateway, password)
    except UpstreamUnavailable as exc:
        await asyncio.to_thread(services.db.unclaim_enrolment, gateway, body.token)
        await services.audit.record(
            actor=None, action="gateway.enroll", gateway=gateway, result=f"failed: {exc.detail}"
        )
        raise
    await asyncio.to_thread(services.db.set_enrolment_client, gateway, client_id)
    await services.audit.record(
        actor=None,
        action="gateway.enroll",
        gateway=gateway,
        target=client_id,
        detail={"client": client, "broker": f"{broker.host}:{broker.port}"},
        result="ok",
    )
    return json_response(Credentials(gateway, gateway, password, client_id, broker))
