"""InfluxDB access: URL, credentials, TLS and their rules, shared by every service.

Ingest's ``influx`` block, the API's ``influx_*`` keys and each of its ``influx_replicas``
describe how they reach an InfluxDB with this one model, so the same mistake gets the same
error in ``ingest check-config`` and ``api check-config``::

    InfluxAccess        url, username, password, token,          base of a service's model
                        ca_file, cert_file, key_file, verify_tls
    .check(prefix)                  the shape rules (run when the model is validated)
    .check_security(allow_insecure=..., prefix=..., allow_key=...)   the two insecure rules
    .ssl_context(prefix)  -> ssl.SSLContext | True                   files read now

Shape rules (always): ``cert_file`` and ``key_file`` go together; TLS files need an
``https://`` URL; ``ca_file`` and ``verify_tls: false`` contradict each other;
``username`` needs ``password``. Security rules, unless ``allow_insecure`` (development
only): ``verify_tls: false`` is refused, and so are credentials (password or token) over
plain http to a host that is not on loopback.

Errors name the keys as the service spells them (``prefix``: ``"influx_"`` for the API's
flat keys; empty inside a nested block, whose location pydantic adds). Files are read when
the connection is prepared, never when a config is parsed.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from foundation._broker import BrokerTls, is_loopback

__all__ = ["InfluxAccess"]

_TLS_FILES: Final = ("ca_file", "cert_file", "key_file")


class InfluxAccess(BaseModel):
    """How a service reaches one InfluxDB: its URL, credentials and TLS.

    Services derive their InfluxDB models from it (keeping their own keys beside these), so
    every service spells and judges these keys the same.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(default="http://127.0.0.1:8086", pattern=r"^https?://")
    username: str | None = None
    password: SecretStr | None = None
    #: v2 API (or a v1-compatibility endpoint that wants a token).
    token: SecretStr | None = None
    #: CA bundle (PEM) that an ``https://`` server's certificate is verified against;
    #: unset: the system's CA store.
    ca_file: Path | None = None
    #: Client certificate and its key (PEM, together), for a server or a TLS proxy in front
    #: of InfluxDB that asks for one (influxd 1.x itself never does).
    cert_file: Path | None = None
    key_file: Path | None = None
    #: ``false`` accepts any certificate (no chain, no hostname check): development only,
    #: refused unless insecure access is allowed.
    verify_tls: bool = True

    @model_validator(mode="after")
    def _shape(self) -> Self:
        self.check()
        return self

    @property
    def https(self) -> bool:
        return self.url.lower().startswith("https://")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def has_credentials(self) -> bool:
        return self.password is not None or self.token is not None

    @property
    def tls(self) -> BrokerTls | None:
        """The TLS files as the platform's one TLS model (``None`` when none is set)."""
        if self.ca_file is None and self.cert_file is None and self.key_file is None:
            return None
        return BrokerTls(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)

    def check(self, prefix: str = "") -> None:
        """The shape rules; :class:`ValueError` naming the keys (``prefix`` + name)."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                f"{prefix}cert_file and {prefix}key_file go together (client certificate)"
            )
        files = [key for key in _TLS_FILES if getattr(self, key) is not None]
        if files and not self.https:
            raise ValueError(
                f"{prefix}{files[0]} needs an https:// {prefix}url (TLS), not {self.url}"
            )
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError(
                f"{prefix}ca_file has no effect with {prefix}verify_tls false: set one or the other"
            )
        if self.username is not None and self.password is None:
            raise ValueError(f"{prefix}username needs {prefix}password")

    def check_security(
        self, *, allow_insecure: bool, prefix: str = "", allow_key: str = "allow_insecure"
    ) -> None:
        """The insecure rules; :class:`ValueError` naming the keys to change."""
        if allow_insecure:
            return
        if not self.verify_tls:
            raise ValueError(f"{prefix}verify_tls false needs {allow_key}: true")
        if self.has_credentials and not self.https and not is_loopback(self.host):
            raise ValueError(
                f"credentials over plain http to a remote InfluxDB ({self.host}) are "
                f"refused: use an https:// {prefix}url (or {allow_key}: true for development)"
            )

    def ssl_context(self, prefix: str = "") -> ssl.SSLContext | bool:
        """How an HTTP client verifies the server: a client context for ``https://`` (files
        read now; no verification at all with ``verify_tls`` false), ``True`` for plain
        http. :class:`foundation.BrokerSetupError` names the key (``prefix`` + ``ca_file``)
        and the file when one is missing or unusable."""
        if not self.https:
            return True
        ctx = (self.tls or BrokerTls()).ssl_context(prefix)
        if not self.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
