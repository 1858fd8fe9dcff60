"""Broker connections: TLS, credentials and their rules, shared by every MQTT client.

The edge agent (uplink and local MQTT input), the ingest workers, the API's live link and the
simulated fleets describe how they get into a broker with the same pieces and set up their
paho clients with the same function::

    BrokerTls        ca_file, cert_file, key_file, insecure     a service's ``tls`` block
    BrokerAccess     username, password | password_file, tls    base of a service's broker model
    check_broker_security(host=..., ...)                        the two rules, for validators
    BrokerTls.ssl_context()        -> ssl.SSLContext            built once per service
    BrokerAccess.read_password()   -> str | None                password_file read at connect
    configure_client(client, access, context=...)               tls_set_context,
                                                                tls_insecure_set, username_pw_set

The rules (:func:`check_broker_security`), unless ``allow_insecure`` (development only):

- ``tls.insecure`` (no hostname verification) is refused;
- a password over plain TCP to a broker that is not on loopback is refused.

Files are checked when the connection is prepared (at service start-up, before the first
connect), not when a config is parsed, so a config can be validated on a machine that does
not hold its certificates. Problems raise :class:`BrokerSetupError` (a :class:`ValueError`)
naming the config key and the file.

Only the standard library, pydantic and paho-mqtt are imported: gateways use this module
without any server package.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Final, Self

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

__all__ = [
    "BrokerAccess",
    "BrokerSetupError",
    "BrokerTls",
    "check_broker_security",
    "configure_client",
    "is_loopback",
]

_TLS_FILES: Final = ("ca_file", "cert_file", "key_file")


class BrokerSetupError(ValueError):
    """A broker connection cannot be prepared: ``key`` is the config key, ``reason`` why."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class BrokerTls(BaseModel):
    """TLS towards a broker. ``ca_file`` unset: the system's CA store. ``cert_file`` and
    ``key_file`` (together) present a client certificate (mutual TLS)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Skip hostname verification (the chain is still verified). Test benches only:
    #: refused unless ``allow_insecure``.
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        return self

    def check_files(self, prefix: str = "tls.") -> None:
        """Raise :class:`BrokerSetupError` naming the key (``prefix`` + ``ca_file``...) and
        the file when a configured file is missing or is not a regular file."""
        for key in _TLS_FILES:
            path: Path | None = getattr(self, key)
            if path is not None and not path.is_file():
                reason = "is not a file" if path.exists() else "file not found"
                raise BrokerSetupError(f"{prefix}{key}", f"{reason}: {path}")

    def ssl_context(self, prefix: str = "tls.") -> ssl.SSLContext:
        """A client context: the CA bundle (or the system store), the client certificate,
        hostname checks off only when ``insecure``. Build it once and share it. Errors name
        the key as ``prefix`` + ``ca_file`` (``"broker.tls."``, ``"mqtt_tls_"``)."""
        self.check_files(prefix)
        try:
            ctx = ssl.create_default_context(
                cafile=None if self.ca_file is None else str(self.ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise BrokerSetupError(
                f"{prefix}ca_file", f"not a usable CA bundle: {self.ca_file}: {exc}"
            ) from exc
        if self.cert_file is not None and self.key_file is not None:
            try:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise BrokerSetupError(
                    f"{prefix}cert_file",
                    f"cannot load the client certificate {self.cert_file} with key "
                    f"{self.key_file}: {exc}",
                ) from exc
        if self.insecure:
            ctx.check_hostname = False
        return ctx


class BrokerAccess(BaseModel):
    """How a client gets into a broker: credentials and TLS.

    Services derive their broker config from it (keeping their own keys next to these), so
    every service spells ``username``, ``password``, ``password_file`` and ``tls`` the same.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str | None = None
    password: SecretStr | None = None
    #: A file holding the password (first line); read when the connection is prepared.
    password_file: Path | None = None
    tls: BrokerTls | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

    @property
    def has_password(self) -> bool:
        return self.password is not None or self.password_file is not None

    def read_password(self, key: str = "password_file") -> str | None:
        """The password, reading ``password_file`` now; :class:`BrokerSetupError` names the
        ``key`` (as the service spells it) and the file when it cannot be read."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise BrokerSetupError(
                key,
                f"cannot read {self.password_file}: {exc.strerror or exc}",
            ) from exc
        lines = text.splitlines()
        return lines[0].strip() if lines else ""


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_broker_security(
    *,
    host: str,
    tls: BrokerTls | None,
    has_password: bool,
    allow_insecure: bool,
    tls_key: str = "tls",
    insecure_key: str | None = None,
    allow_key: str = "allow_insecure",
) -> None:
    """The platform's rules for a broker connection; raise :class:`ValueError` with the keys
    to change, as the service spells them (``tls_key``, ``insecure_key`` (default
    ``{tls_key}.insecure``), ``allow_key``), and the reason.

    Unless ``allow_insecure``: TLS without hostname verification is refused, and so is a
    password over plain TCP to a host that is not on loopback.
    """
    if allow_insecure:
        return
    if tls is not None and tls.insecure:
        insecure = insecure_key or f"{tls_key}.insecure"
        raise ValueError(f"{insecure} needs {allow_key}: true (development only)")
    if has_password and tls is None and not is_loopback(host):
        raise ValueError(
            f"a password over plain TCP to a remote broker ({host}) is refused: configure "
            f"{tls_key} (or {allow_key}: true for development)"
        )


def configure_client(
    client: mqtt.Client,
    access: BrokerAccess,
    *,
    context: ssl.SSLContext | None = None,
    password: str | None = None,
) -> None:
    """Apply credentials and TLS to a new paho client (before ``connect``).

    ``context``: the context built once with :meth:`BrokerTls.ssl_context` (built here when
    not given). ``password``: already read with :meth:`BrokerAccess.read_password` (read
    here when not given).
    """
    if access.tls is not None:
        ctx = context if context is not None else access.tls.ssl_context()
        client.tls_set_context(ctx)
        client.tls_insecure_set(access.tls.insecure)
    if access.username is not None:
        secret = password if password is not None else access.read_password()
        client.username_pw_set(access.username, secret)
