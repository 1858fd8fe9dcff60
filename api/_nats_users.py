"""Gateway users of the cluster profile, kept in a replicated JetStream KV bucket.

The API writes; every NATS node has its own ``smartcity nats users-sync`` that reads the
bucket, renders the node's users (``include``\\ d by the node's config) and reloads it::

    API ── put / delete ──▶ KV bucket (replicas 3, one key per gateway)
                               │ read by each node's sync (a changed last sequence)
                 ┌─────────────┼─────────────┐
                 ▼             ▼             ▼
       sync + nats-0   sync + nats-1   sync + nats-2    users file, SIGHUP (reload)

No part is in a gateway's connection path: a node authenticates from its own rendered
file, so gateways connect while the API, a sync or a node is down; only changes wait. A
reload checks every connected client again, so a deleted user's live connection is
closed by every node that reloads (measured on 2.15.1: 23 ms after the SIGHUP; the other
connections stay).

One entry per gateway: key the gateway id, value ``{"bcrypt": "<hash>"}``. Only the hash
is stored; the permissions are not in the entry but derived from the key by each sync
(its own topics only, MQTT only), so whoever can write the bucket can admit a gateway but
not widen what a gateway may do.

Errors: :class:`NatsUsersError` (an :class:`api._errors.UpstreamUnavailable`, 503) when the
cluster cannot be reached or refuses the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import bcrypt
import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from api._dynsec import Dynsec
from api._errors import UpstreamUnavailable
from api._settings_enrol import NatsUsersAdmin
from foundation import BrokerSetupError
from telemetry import TopicError, check_cluster_id

__all__ = ["HASH_FIELD", "GatewayUsers", "NatsUsers", "NatsUsersError"]

#: The field of an entry holding the password's bcrypt hash (``smartcity nats users-sync``
#: reads the same).
HASH_FIELD: Final = "bcrypt"


class NatsUsersError(UpstreamUnavailable):
    """The cluster could not be reached or refused a change of the gateway users."""


class GatewayUsers(Protocol):
    """What enrolment needs from the broker's authorisation (:class:`api._dynsec.Dynsec`
    for mosquitto, :class:`NatsUsers` for the cluster profile)."""

    async def add_gateway(self, gateway: str, password: str) -> str: ...

    async def remove_gateway(self, gateway: str) -> None: ...

    async def has_gateway(self, gateway: str) -> bool: ...


class NatsUsers:
    """The bucket's writes the API needs (one short NATS connection per call)."""

    def __init__(self, admin: NatsUsersAdmin) -> None:
        self._admin = admin

    @contextlib.asynccontextmanager
    async def _bucket(self) -> AsyncIterator[KeyValue]:
        admin = self._admin
        try:
            options: dict[str, Any] = {
                "servers": list(admin.servers),
                "name": "api.nats-users",
                "connect_timeout": admin.timeout_s,
                "allow_reconnect": False,
                "user": admin.username,
                "password": admin.read_password("password_file"),
            }
            if admin.tls is not None:
                options["tls"] = admin.tls.ssl_context("enrolment.nats.tls.")
        except BrokerSetupError as exc:
            raise NatsUsersError(f"enrolment.nats: {exc}") from exc
        servers = ", ".join(admin.servers)
        try:
            async with asyncio.timeout(admin.timeout_s):
                nc = await nats.connect(**options)
                try:
                    js = nc.jetstream(timeout=admin.timeout_s)
                    try:
                        kv = await js.key_value(admin.bucket)
                    except nats.js.errors.BucketNotFoundError:
                        kv = await js.create_key_value(
                            KeyValueConfig(
                                bucket=admin.bucket,
                                history=1,
                                replicas=admin.replicas,
                                storage=StorageType.FILE,
                                description="smart-city gateway users (enrolment)",
                            )
                        )
                    yield kv
                finally:
                    await nc.close()
        except TimeoutError as exc:
            raise NatsUsersError(
                f"the NATS cluster did not answer within {admin.timeout_s:g} s ({servers})"
            ) from exc
        except (nats.errors.Error, OSError) as exc:
            raise NatsUsersError(
                f"gateway users in bucket {admin.bucket!r} ({servers}): {exc or type(exc).__name__}"
            ) from exc

    async def add_gateway(self, gateway: str, password: str) -> str:
        """(Re)write user ``gateway`` with ``password`` (hashed here; the plain password is
        not stored). Return the client id the gateway is told to use."""
        try:
            check_cluster_id("gateway id", gateway)
        except TopicError as exc:
            raise NatsUsersError(exc.reason) from exc
        salt = bcrypt.gensalt(self._admin.bcrypt_cost)
        hashed = bcrypt.hashpw(password.encode(), salt).decode("ascii")
        async with self._bucket() as kv:
            await kv.put(gateway, json.dumps({HASH_FIELD: hashed}).encode())
        return Dynsec.client_id(gateway)

    async def remove_gateway(self, gateway: str) -> None:
        """Delete user ``gateway`` (an absent one is no error). Each node's sync drops it
        and reloads, which closes its live connections."""
        async with self._bucket() as kv:
            await kv.delete(gateway)

    async def has_gateway(self, gateway: str) -> bool:
        """Whether the bucket holds user ``gateway`` (read back after a change)."""
        async with self._bucket() as kv:
            try:
                await kv.get(gateway)
            except nats.js.errors.KeyNotFoundError:  # deleted ones too
                return False
        return True
