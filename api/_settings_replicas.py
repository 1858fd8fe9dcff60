"""The API's InfluxDB replicas (cluster profile, docs/cluster.md): which databases it may
read from, and where it reads each one's consumer lag.

::

    influx_replicas:                       # unset (default): the one influx_url, as before
      - {name: a, url: https://influx-a.city:8086, durable: ingest-a,
         username: api, password: ..., ca_file: /etc/smartcity/ca.pem}
      - {name: b, url: https://influx-b.city:8086, durable: ingest-b}
    replica_lag:
      servers: [tls://nats-1:4222, tls://nats-2:4222, tls://nats-3:4222]
      username: api
      password_file: /etc/smartcity/api.nats.password
      tls: {ca_file: /etc/smartcity/ca.pem}
      max_lag: 1000                        # messages: "caught up" tolerance
      check_interval_s: 2

Each replica is one InfluxDB fed by its own ingest group, whose durable JetStream consumer
is ``durable``. Its lag is that consumer's ``num_pending + num_ack_pending``: messages the
replica does not hold yet. The database name, the timeout and ``influx_allow_insecure`` are
the ``influx_*`` ones. Nothing here opens a file: TLS files and the password file are read
when the connections are prepared at start-up.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from foundation import BrokerAccess, InfluxAccess

__all__ = ["InfluxReplica", "ReplicaLagSettings"]

_Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]


class InfluxReplica(InfluxAccess):
    """One InfluxDB replica (an item of ``influx_replicas``): ``url``, ``username``,
    ``password``, the TLS files and their rules come from :class:`foundation.InfluxAccess`,
    as ingest's ``influx`` block spells them."""

    #: Shown in ``/v1/health``, the metrics' ``replica`` label and the logs.
    name: _Id
    #: The durable JetStream consumer that feeds this replica (its ingest group's
    #: ``jetstream.durable``); unset: its lag is not tracked and it counts as caught up.
    durable: _Id | None = None

    @model_validator(mode="after")
    def _read_by_the_api(self) -> Self:
        if self.token is not None or not self.verify_tls:
            raise ValueError(
                "token and verify_tls are not read by the API: it reads with username and "
                "password, over verified TLS"
            )
        return self


class ReplicaLagSettings(BrokerAccess):
    """Where the API reads the replicas' consumer lag (``replica_lag`` block):
    ``username``, ``password`` | ``password_file`` and ``tls`` from
    :class:`foundation.BrokerAccess`, as ingest's ``jetstream`` block spells them."""

    #: NATS client URLs of the cluster (``nats://host:port``, ``tls://host:port``).
    servers: tuple[Annotated[str, Field(pattern=r"^(nats|tls)://[^/\s]+$")], ...] = ()
    #: The stream the durable consumers read (nats-server's MQTT gateway: ``$MQTT_msgs``).
    stream: str = "$MQTT_msgs"
    #: A replica whose lag is at most this many messages is caught up. Messages in flight
    #: to its workers (up to ingest's ``jetstream.max_ack_pending``, 1000 by default) count
    #: as lag, so under steady traffic a healthy replica hovers below that; 0 asks for an
    #: idle, fully written replica.
    max_lag: Annotated[int, Field(ge=0, le=10_000_000)] = 1000
    #: How often each replica is pinged and its lag read.
    check_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
