"""The API's ``mqtt`` settings block, and the flat ``mqtt_*`` keys it replaces.

The block is the platform's broker-access model (:class:`foundation.BrokerAccess`:
``username``, ``password`` | ``password_file``, ``tls``), named as ingest names it, plus
what the API's own session needs::

    mqtt:
      host: broker.city.example
      port: 8883
      username: _api-1          # pinned to client id api-1 (provision.sh add-service api 1)
      password_file: /etc/smartcity/api.mqtt-password
      tls: {ca_file: /etc/smartcity/certs/ca.pem, cert_file: ..., key_file: ...}
      client_id: api-1

Environment: ``SMARTCITY_API_MQTT__HOST``, ``SMARTCITY_API_MQTT__TLS__CA_FILE``...

Deprecated aliases (still accepted in the YAML file, as ``SMARTCITY_API_MQTT_*`` environment
variables and as keyword arguments; see :data:`LEGACY_KEYS`): ``mqtt_host`` is
``mqtt.host``, ``mqtt_tls_ca_file`` is ``mqtt.tls.ca_file``, ``mqtt_tls: true`` is
``mqtt.tls: {}``... Within one source an alias and its nested key together are refused;
across sources the usual priority holds (flags, then environment, then file), and in the
environment the nested spelling beats the flat one.

Files (TLS, password) are not looked at here: they are read when the connection is prepared
at start-up (:func:`api.state.prepare_broker`), as everywhere on the platform.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from foundation import BrokerAccess, check_broker_security
from foundation.mqtt import parse_address

__all__ = ["LEGACY_KEYS", "MqttSettings", "fold_legacy_keys"]

_Positive = Annotated[float, Field(gt=0)]
_ENV_PREFIX: Final = "SMARTCITY_API_"


class MqttSettings(BrokerAccess):
    """Where the API's live subscription connects, and how (``mqtt`` block)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    #: Client id; every replica needs its own (the default adds a random suffix). A valid
    #: topic level: gateways answer the API's commands on ``.../cmd/response/<client_id>``.
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")] = Field(
        default_factory=lambda: f"api-{secrets.token_hex(4)}"
    )
    #: How long the lifespan waits for the first broker connection before serving anyway
    #: (``/readyz`` answers 503 until it is up); also the bound of every connect attempt.
    connect_timeout_s: _Positive = 10.0
    #: Received messages waiting for the event loop; at this many the session stops reading
    #: the socket (TCP pushes back on the broker) until half of them are handled.
    max_buffered: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    #: Development only: permits ``tls.insecure`` and a password over plain TCP to a broker
    #: that is not on loopback.
    allow_insecure: bool = False
    #: ``mqtt5`` (mosquitto) or ``mqtt311`` (the cluster profile, docs/cluster.md: commands
    #: then carry their reply address in the body).
    protocol: Literal["mqtt5", "mqtt311"] = "mqtt5"
    #: More broker addresses (``host:port``) to fail over to, after ``host:port``.
    hosts: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return ((self.host, self.port), *(parse_address(h) for h in self.hosts))

    @model_validator(mode="after")
    def _rules(self) -> Self:
        for host, _port in self.addresses:  # parse_address: ValueError naming the entry
            check_broker_security(
                host=host,
                tls=self.tls,
                has_password=self.has_password,
                allow_insecure=self.allow_insecure,
                tls_key="mqtt.tls",
                allow_key="mqtt.allow_insecure",
            )
        return self


#: Deprecated flat key -> its place in the ``mqtt`` block (``mqtt_tls`` is special: a true
#: value asks for ``tls: {}``, TLS with the system CA store).
LEGACY_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "mqtt_host": ("host",),
    "mqtt_port": ("port",),
    "mqtt_username": ("username",),
    "mqtt_password": ("password",),
    "mqtt_password_file": ("password_file",),
    "mqtt_tls": ("tls",),
    "mqtt_tls_ca_file": ("tls", "ca_file"),
    "mqtt_tls_cert_file": ("tls", "cert_file"),
    "mqtt_tls_key_file": ("tls", "key_file"),
    "mqtt_tls_insecure": ("tls", "insecure"),
    "mqtt_allow_insecure": ("allow_insecure",),
    "mqtt_client_id": ("client_id",),
    "mqtt_connect_timeout_s": ("connect_timeout_s",),
    "mqtt_inbox": ("max_buffered",),
}
_BOOL: Final = TypeAdapter(bool)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, BrokerAccess) or hasattr(value, "model_dump"):
        return dict(value.model_dump(exclude_unset=True))
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError("mqtt must be a mapping")


def fold_legacy_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every deprecated ``mqtt_*`` key moved into the ``mqtt`` block.

    Raise :class:`ValueError` when an alias and its nested key are both given, or when
    ``mqtt_tls`` is not a boolean.
    """
    legacy = {k: v for k, v in data.items() if k.lower() in LEGACY_KEYS}
    if not legacy:
        return dict(data)
    out = {k: v for k, v in data.items() if k not in legacy}
    mqtt = _as_dict(out.get("mqtt") or {})
    for key, value in legacy.items():
        path = LEGACY_KEYS[key.lower()]
        if value is None:
            continue  # unset, as the flat default was
        if path in {("tls",), ("tls", "insecure")}:
            try:
                wanted = _BOOL.validate_python(value)
            except ValidationError:
                raise ValueError(f"{key}: must be true or false, not {value!r}") from None
            if not wanted:
                continue  # false never turned TLS on (nor off: a tls file still does)
            if path == ("tls",):
                if mqtt.get("tls") is None:
                    mqtt["tls"] = {}
                continue
        target = mqtt
        for part in path[:-1]:
            block = target.get(part)
            target[part] = _as_dict(block) if block is not None else {}
            target = target[part]
        if path[-1] in target:
            nested = "mqtt." + ".".join(path)
            raise ValueError(f"{key} is a deprecated alias of {nested}: set only {nested}")
        target[path[-1]] = value
    out["mqtt"] = mqtt
    return out


class FoldedSource(PydanticBaseSettingsSource):
    """A settings source with the deprecated keys folded into ``mqtt`` before it is merged
    with the others, so each source keeps its priority."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return fold_legacy_keys(self._inner())


class LegacyEnvSource(PydanticBaseSettingsSource):
    """The deprecated ``SMARTCITY_API_MQTT_*`` variables (below the nested ones)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {
            name[len(_ENV_PREFIX) :].lower(): value
            for name, value in os.environ.items()
            if name.upper().startswith(_ENV_PREFIX)
            and name[len(_ENV_PREFIX) :].lower() in LEGACY_KEYS
        }
        return fold_legacy_keys(found) if found else {}
