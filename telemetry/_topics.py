"""The MQTT topic namespace, versioned with the payload format.

::

    {root}/v1/{gateway}/telemetry            batches (QoS 1)                 gateway -> platform
    {root}/v1/{gateway}/status               birth / death (retained, LWT)   gateway -> platform
    {root}/v1/{gateway}/health               periodic health (QoS 0)         gateway -> platform
    {root}/v1/{gateway}/config/desired       desired config (retained)       platform -> gateway
    {root}/v1/{gateway}/config/reported      applied/rejected (retained)     gateway -> platform
    {root}/v1/{gateway}/cmd                  command requests (MQTT v5       platform -> gateway
                                             response topic + correlation data)
    {root}/v1/{gateway}/cmd/response/{client} conventional response topic   gateway -> platform
    {root}/v1/_sys/deadletter/{service}      refused payloads with reasons   platform

``root`` defaults to ``sc`` and may have several levels (``city/oslo``); tests give each test
its own root. Gateway ids can never start with ``_``, so ``_sys`` cannot collide with one.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from telemetry._errors import TopicError
from telemetry._model import ID_RE

__all__ = ["DEFAULT_ROOT", "TOPIC_VERSION", "TopicKind", "Topics"]

DEFAULT_ROOT: Final = "sc"
TOPIC_VERSION: Final = "v1"
_LEVEL = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
_ROOT_RE: Final = re.compile(rf"{_LEVEL}(/{_LEVEL}){{0,3}}")


class TopicKind(enum.StrEnum):
    """What a topic under a gateway carries."""

    TELEMETRY = "telemetry"
    STATUS = "status"
    HEALTH = "health"
    CONFIG_DESIRED = "config/desired"
    CONFIG_REPORTED = "config/reported"
    COMMAND = "cmd"
    COMMAND_RESPONSE = "cmd/response"


class Topics:
    """Builds and parses the topics of one namespace root.

    >>> t = Topics("sc")
    >>> t.telemetry("cabinet-017")
    'sc/v1/cabinet-017/telemetry'
    >>> t.parse("sc/v1/cabinet-017/telemetry")
    ('cabinet-017', <TopicKind.TELEMETRY: 'telemetry'>)
    """

    __slots__ = ("_base", "root")

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        if not _ROOT_RE.fullmatch(root):
            raise TopicError(f"topic root {root!r} must match {_ROOT_RE.pattern}")
        self.root = root
        self._base = f"{root}/{TOPIC_VERSION}/"

    def _gw(self, gateway: str, kind: TopicKind) -> str:
        if not ID_RE.fullmatch(gateway):
            raise TopicError(f"gateway id {gateway!r} cannot be a topic level")
        return f"{self._base}{gateway}/{kind.value}"

    def telemetry(self, gateway: str) -> str:
        return self._gw(gateway, TopicKind.TELEMETRY)

    def status(self, gateway: str) -> str:
        return self._gw(gateway, TopicKind.STATUS)

    def health(self, gateway: str) -> str:
        return self._gw(gateway, TopicKind.HEALTH)

    def config_desired(self, gateway: str) -> str:
        return self._gw(gateway, TopicKind.CONFIG_DESIRED)

    def config_reported(self, gateway: str) -> str:
        return self._gw(gateway, TopicKind.CONFIG_REPORTED)

    def command(self, gateway: str) -> str:
        return self._gw(gateway, TopicKind.COMMAND)

    def command_response(self, gateway: str, client: str) -> str:
        if not ID_RE.fullmatch(client):
            raise TopicError(f"client id {client!r} cannot be a topic level")
        return f"{self._gw(gateway, TopicKind.COMMAND_RESPONSE)}/{client}"

    def deadletter(self, service: str) -> str:
        if not ID_RE.fullmatch(service):
            raise TopicError(f"service name {service!r} cannot be a topic level")
        return f"{self._base}_sys/deadletter/{service}"

    def all_gateways(self, kind: TopicKind) -> str:
        """Subscription filter for one kind of topic across every gateway."""
        return f"{self._base}+/{kind.value}"

    def shared(self, group: str, kind: TopicKind) -> str:
        """MQTT v5 shared-subscription filter: members of ``group`` split the messages."""
        if not ID_RE.fullmatch(group):
            raise TopicError(f"share group {group!r} cannot be a topic level")
        return f"$share/{group}/{self.all_gateways(kind)}"

    def parse(self, topic: str) -> tuple[str, TopicKind]:
        """Split a gateway topic into (gateway id, kind); raise :class:`TopicError` if foreign."""
        if not topic.startswith(self._base):
            raise TopicError(f"topic {topic!r} is not under {self._base!r}")
        gateway, _, rest = topic[len(self._base) :].partition("/")
        if not ID_RE.fullmatch(gateway):
            raise TopicError(f"topic {topic!r} has no valid gateway level")
        if rest.startswith("cmd/response/"):
            return gateway, TopicKind.COMMAND_RESPONSE
        try:
            return gateway, TopicKind(rest)
        except ValueError:
            raise TopicError(f"topic {topic!r} has an unknown kind {rest!r}") from None
