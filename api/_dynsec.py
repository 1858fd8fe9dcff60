"""Gateway users in mosquitto's dynamic-security plugin, as ``provision.sh`` makes them.

The API talks to the plugin the way ``mosquitto_ctrl`` does: as the dynsec admin, it
publishes a JSON list of commands to ``$CONTROL/dynamic-security/v1`` and reads the answers
on ``.../v1/response`` (matched by ``correlationData``: other admins may be talking too)::

    connect (admin) ─ subscribe .../response ─ publish {"commands": [...]} ─ answers ─ close

A gateway ``ID`` gets what ``provision.sh add-gateway ID`` gives it: the user ``ID`` pinned
to client id ``edge-ID`` and its own role ``gateway:ID`` (its own topics only). Removing it
deletes both, which disconnects the gateway at once; its password is refused from then on.

Errors: :class:`DynsecError` (an :class:`api._errors.UpstreamUnavailable`, 503) for a
broker that cannot be reached or refuses a command.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Final

import msgspec

from api._errors import UpstreamUnavailable
from api._settings_enrol import DynsecAdmin
from foundation import BrokerSetupError
from foundation.mqtt import MqttError, MqttSession, SessionConfig
from telemetry import Topics

__all__ = ["Dynsec", "DynsecError", "gateway_acls"]

_TOPIC: Final = "$CONTROL/dynamic-security/v1"
_NOT_FOUND: Final = ("not found",)


class DynsecError(UpstreamUnavailable):
    """The broker's dynamic-security plugin could not be reached or refused a command."""


def gateway_acls(topics: Topics, gateway: str) -> list[tuple[str, str]]:
    """(acltype, topic) of role ``gateway:<id>``: exactly ``provision.sh add-gateway``'s."""
    response = topics.command_response(gateway, "x").rsplit("/", 1)[0] + "/#"
    return [
        ("publishClientSend", topics.telemetry(gateway)),
        ("publishClientSend", topics.status(gateway)),
        ("publishClientSend", topics.health(gateway)),
        ("publishClientSend", topics.config_reported(gateway)),
        ("publishClientSend", response),
        ("subscribeLiteral", topics.config_desired(gateway)),
        ("subscribeLiteral", topics.command(gateway)),
        ("publishClientReceive", topics.config_desired(gateway)),
        ("publishClientReceive", topics.command(gateway)),
    ]


class Dynsec:
    """The plugin's admin commands the API needs (one short admin connection per call)."""

    def __init__(self, admin: DynsecAdmin, topics: Topics) -> None:
        self._admin = admin
        self._topics = topics

    async def call(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands``; return the plugin's answer to each, in order."""
        try:
            admin = self._admin.resolved()
        except ValueError as exc:
            raise DynsecError(f"enrolment.dynsec: {exc}") from exc
        nonce = secrets.token_hex(8)
        tagged = [{**c, "correlationData": f"{nonce}-{i}"} for i, c in enumerate(commands)]
        config = SessionConfig(
            host=admin.host, port=admin.port, client_id=f"api-dynsec-{nonce}",
            access=admin, connect_timeout_s=admin.timeout_s, name="api.dynsec",
        )
        answers: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(admin.timeout_s):
                async with MqttSession(config) as session:
                    await session.subscribe(f"{_TOPIC}/response", qos=1)
                    await session.publish(_TOPIC, msgspec.json.encode({"commands": tagged}))
                    async for msg in session.messages():
                        try:
                            body = msgspec.json.decode(msg.payload)
                        except msgspec.DecodeError:
                            continue
                        replies = body.get("responses", []) if isinstance(body, dict) else []
                        for answer in replies if isinstance(replies, list) else []:
                            if not isinstance(answer, dict):
                                continue
                            tag = answer.get("correlationData")
                            if isinstance(tag, str) and tag.startswith(nonce):
                                answers[tag] = answer
                        if len(answers) == len(tagged):
                            break
        except TimeoutError as exc:
            raise DynsecError(
                f"the broker's dynamic-security plugin did not answer within "
                f"{admin.timeout_s:g} s ({admin.host}:{admin.port})"
            ) from exc
        except (MqttError, BrokerSetupError, OSError) as exc:
            raise DynsecError(f"broker admin connection to {admin.host}:{admin.port}: {exc}") \
                from exc
        return [answers[c["correlationData"]] for c in tagged]

    async def _checked(self, commands: list[dict[str, Any]], *, tolerate: int = 0) -> None:
        """Run ``commands``; the first ``tolerate`` may fail with "not found"."""
        for i, answer in enumerate(await self.call(commands)):
            error = answer.get("error")
            if not error:
                continue
            if i < tolerate and any(s in str(error).lower() for s in _NOT_FOUND):
                continue
            raise DynsecError(f"dynamic security {answer.get('command')}: {error}")

    @staticmethod
    def client_id(gateway: str) -> str:
        """The one client id a gateway may use (the edge agent's default)."""
        return f"edge-{gateway}"

    async def add_gateway(self, gateway: str, password: str) -> str:
        """(Re)create user ``gateway`` with ``password``, client id ``edge-<id>`` and role
        ``gateway:<id>``; an existing user of that name is replaced (and disconnected).
        Return the client id."""
        role = f"gateway:{gateway}"
        client_id = self.client_id(gateway)
        commands: list[dict[str, Any]] = [
            {"command": "deleteClient", "username": gateway},
            {"command": "deleteRole", "rolename": role},
            {"command": "createRole", "rolename": role},
        ]
        commands += [
            {"command": "addRoleACL", "rolename": role, "acltype": acltype, "topic": topic,
             "allow": True}
            for acltype, topic in gateway_acls(self._topics, gateway)
        ]
        commands += [
            {"command": "createClient", "username": gateway, "password": password,
             "clientid": client_id},
            {"command": "addClientRole", "username": gateway, "rolename": role},
        ]
        await self._checked(commands, tolerate=2)
        return client_id

    async def remove_gateway(self, gateway: str) -> None:
        """Delete user ``gateway`` and its role (an absent one is no error): its connection
        is dropped at once and its password refused from then on."""
        await self._checked([
            {"command": "deleteClient", "username": gateway},
            {"command": "deleteRole", "rolename": f"gateway:{gateway}"},
        ], tolerate=2)

    async def has_gateway(self, gateway: str) -> bool:
        """Whether the plugin knows user ``gateway`` (read back after a change)."""
        answer = (await self.call([{"command": "getClient", "username": gateway}]))[0]
        if answer.get("error"):
            if "not found" in str(answer["error"]).lower():
                return False
            raise DynsecError(f"dynamic security getClient: {answer['error']}")
        return True
