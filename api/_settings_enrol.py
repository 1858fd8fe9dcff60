"""Settings of gateway enrolment (``enrolment`` block of :class:`api.ApiSettings`).

::

    enrolment:
      token_ttl_s: 86400            # a claim token expires after a day
      dynsec:                       # the broker's dynamic-security admin
        options_file: /etc/mosquitto/smartcity-dynsec-admin   # written by provision.sh init
      broker_host: mqtt.city.example  # what an enrolled gateway is told to connect to
      broker_port: 8883
      broker_ca_file: /etc/smartcity/certs/ca.pem             # handed to the gateway (PEM)

    enrolment:                      # the cluster profile (docs/cluster.md, "Enrolment")
      nats:                         # gateway users in a replicated JetStream KV bucket
        servers: [tls://nats-1.example.org:4222, tls://nats-2.example.org:4222]
        username: api-enrol
        password_file: /etc/smartcity/api-enrol.nats.password
        tls: {ca_file: /etc/smartcity/ca.pem}
      broker_host: nats-1.example.org # first MQTT address; broker_hosts: the others
      broker_port: 8883
      broker_hosts: [nats-2.example.org:8883, nats-3.example.org:8883]

The block given says which broker makes the gateway's user: ``dynsec`` (mosquitto) or
``nats`` (the cluster profile; gateways then speak MQTT 3.1.1). Without either, claim
tokens can be issued and revoked, but a gateway cannot redeem one (``POST /v1/enrol``
answers 404): nothing could create its broker user.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from foundation import BrokerAccess, check_broker_security

__all__ = ["DynsecAdmin", "EnrolSettings", "NatsUsersAdmin", "read_options_file"]

_OPTIONS = {
    "-h": "host",
    "--host": "host",
    "-p": "port",
    "--port": "port",
    "-u": "username",
    "--username": "username",
    "-P": "password",
    "--pw": "password",
}


def read_options_file(path: Path) -> dict[str, str]:
    """``host``, ``port``, ``username``, ``password`` from a ``mosquitto_ctrl`` options file
    (one option per line, ``-u _admin``), as ``provision.sh init`` writes it. ValueError
    naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) != 2 or words[0] not in _OPTIONS:
            raise ValueError(
                f"{path}:{number}: expected one of {sorted(set(_OPTIONS))} and a value"
            )
        found[_OPTIONS[words[0]]] = words[1]
    return found


class DynsecAdmin(BrokerAccess):
    """How the API reaches mosquitto's dynamic-security plugin (``$CONTROL/dynamic-
    security/v1``) as its admin user. ``options_file`` (``provision.sh init`` writes it:
    ``-h``, ``-p``, ``-u``, ``-P``) gives host, port, username and password at once; or give
    them here (``password_file`` like every broker login)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    options_file: Path | None = None
    #: Bound of one round trip: connect, the commands, their answer.
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    #: Development only: a password over plain TCP to a broker not on loopback.
    allow_insecure: bool = False

    def resolved(self) -> DynsecAdmin:
        """These settings with the options file read in (read at every use: the file may
        change when the admin password does)."""
        if self.options_file is None:
            return self
        found = read_options_file(self.options_file)
        values = self.model_dump(exclude={"options_file", "password", "password_file"})
        values.update({k: v for k, v in found.items() if k != "password"})
        password = found.get("password")
        return DynsecAdmin(**values, password=SecretStr(password) if password else None)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.options_file is None and self.username is None:
            raise ValueError("enrolment.dynsec: give options_file, or username and password")
        check_broker_security(
            host=self.host,
            tls=self.tls,
            has_password=self.has_password or self.options_file is not None,
            allow_insecure=self.allow_insecure or self.options_file is not None,
            tls_key="enrolment.dynsec.tls",
            allow_key="enrolment.dynsec.allow_insecure",
        )
        return self


class NatsUsersAdmin(BrokerAccess):
    """Where the API keeps gateway users in the cluster profile: a JetStream KV bucket
    (``api._nats_users``), read on every node by ``smartcity nats users-sync``, which
    renders the node's users and reloads it. ``username``, ``password`` | ``password_file``
    and ``tls`` as every broker login (a user of the application account allowed to write
    the bucket)."""

    #: NATS client URLs of the cluster's nodes (``nats://host:port``, ``tls://host:port``).
    servers: tuple[Annotated[str, Field(pattern=r"^(nats|tls)://[^/\s]+$")], ...] = Field(
        min_length=1
    )
    #: The KV bucket of gateway users (the syncs read the same name).
    bucket: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "sc_gateway_users"
    #: Replicas of the bucket when the API creates it (every node's store, as $MQTT_msgs).
    replicas: Annotated[int, Field(ge=1, le=5)] = 3
    #: bcrypt cost of the stored password hashes. The passwords are 192 random bits, so the
    #: work factor guards nothing; every node checks the hash of each connected gateway on
    #: every reload and of each new connection (measured on 2.15.1, 300 MQTT connections on
    #: one node: a reload took 1.1 s at cost 4 and 152 s at cost 10).
    bcrypt_cost: Annotated[int, Field(ge=4, le=12)] = 4
    #: Bound of one round trip: connect, the bucket, the write.
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    #: Development only: a password over plain TCP to a server not on loopback.
    allow_insecure: bool = False

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.username is None or not self.has_password:
            raise ValueError("enrolment.nats: give username and password (or password_file)")
        for server in self.servers:
            check_broker_security(
                host=urlsplit(server).hostname or "",
                tls=self.tls,
                has_password=True,
                allow_insecure=self.allow_insecure,
                tls_key="enrolment.nats.tls",
                allow_key="enrolment.nats.allow_insecure",
            )
        return self


class EnrolSettings(BaseModel):
    """Claim tokens and what an enrolled gateway is given (docs/security.md, "Enrolment")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: How long a claim token can be redeemed.
    token_ttl_s: Annotated[float, Field(ge=60, le=30 * 86_400)] = 86_400.0
    #: ``POST /v1/enrol`` calls per client address per minute (burst: at once); every call
    #: counts, redeemed or refused, so tokens cannot be guessed at speed (256 random bits).
    rate_per_min: Annotated[float, Field(gt=0, le=6000)] = 10.0
    rate_burst: Annotated[int, Field(ge=1, le=1000)] = 5
    #: The broker that makes gateway users: mosquitto's dynamic security ...
    dynsec: DynsecAdmin | None = None
    #: ... or the NATS cluster's users (the cluster profile). One of the two.
    nats: NatsUsersAdmin | None = None
    #: What an enrolled gateway is told to connect to (default: the API's own ``mqtt.host``,
    #: ``mqtt.port`` and ``mqtt.hosts``), and the CA it should trust there: the PEM of this
    #: file is handed over with the credentials, and the gateway then uses TLS.
    broker_host: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    broker_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: Further ``host:port`` addresses, tried in order after the first (the cluster's nodes).
    broker_hosts: tuple[Annotated[str, Field(pattern=r"^[^\s:/]+:\d{1,5}$")], ...] | None = None
    broker_ca_file: Path | None = None
    #: The gateway connects with TLS and the system CA store (no ``broker_ca_file``).
    broker_tls: bool = False

    @model_validator(mode="after")
    def _one_broker(self) -> Self:
        if self.dynsec is not None and self.nats is not None:
            raise ValueError("enrolment: give dynsec (mosquitto) or nats (cluster), not both")
        return self
