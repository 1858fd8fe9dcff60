"""Opening one connection, and what differs between MQTT 5 and 3.1.1.

::

    new_client()    a fresh paho client per connection: protocol version, clean start
                    (3.1.1: clean session), manual ack, will, credentials and TLS
    connect()       paho connect() in the default executor (DNS, TCP, TLS handshake,
                    CONNECT with the v5 properties) ─▶ Connection.attach() ─▶ CONNACK
                    every failure becomes MqttConnectError (errno or CONNACK reason code)

paho's ``connect()`` blocks, so the executor runs it, bounded by ``connect_timeout_s``; a
connect we stop waiting for is closed when it finishes, and the socket of a failed TLS
handshake is closed at once (paho leaves it to the garbage collector).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from foundation import BrokerSetupError, configure_client
from foundation.mqtt._config import SessionConfig
from foundation.mqtt._connection import SUCCESS, Connection, ConnectionOwner
from foundation.mqtt._errors import MqttConfigError, MqttConnectError

__all__ = ["connect", "new_client"]


def new_client(cfg: SessionConfig, ssl_context: ssl.SSLContext | None) -> mqtt.Client:
    """A fresh paho client for one connection; :class:`MqttConfigError` for bad access."""
    if cfg.version == "5":
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=cfg.manual_ack,
        )
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=cfg.clean_start,
            manual_ack=cfg.manual_ack,
        )
    client.connect_timeout = cfg.connect_timeout_s
    # The window is ours (publish / publish_nowait): paho sends what it is given.
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    if cfg.will is not None:
        w = cfg.will
        client.will_set(w.topic, w.payload, w.qos, w.retain, w.properties)
    try:
        configure_client(client, cfg.access, context=ssl_context)
    except BrokerSetupError as exc:
        raise MqttConfigError(exc.key, exc.reason) from exc
    return client


def _connect_call(
    client: mqtt.Client, cfg: SessionConfig, host: str, port: int
) -> Callable[[], MQTTErrorCode]:
    """paho's blocking connect with the CONNECT options of the version (v5 properties:
    Session Expiry Interval, Receive Maximum)."""
    if cfg.version != "5":
        return functools.partial(client.connect, host, port, cfg.keepalive_s)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if cfg.session_expiry_s is not None:
        props.SessionExpiryInterval = cfg.session_expiry_s
    if cfg.receive_maximum is not None:
        props.ReceiveMaximum = cfg.receive_maximum
    return functools.partial(
        client.connect,
        host,
        port,
        cfg.keepalive_s,
        clean_start=cfg.clean_start,
        properties=props if (cfg.session_expiry_s or cfg.receive_maximum) else None,
    )


async def connect(
    owner: ConnectionOwner,
    address: tuple[str, int],
    ssl_context: ssl.SSLContext | None,
) -> Connection:
    """One connection to ``address``, returned once its CONNACK accepted it (the owner's
    ``connack`` has run by then). :class:`MqttConnectError` otherwise (``errno``: socket
    failure or ``ETIMEDOUT``; ``reason_code``: CONNACK refusal); :class:`MqttConfigError`
    for bad access settings."""
    cfg = owner.config
    client = new_client(cfg, ssl_context)
    conn = Connection(owner, client)
    # paho's connect() blocks (DNS, TCP, TLS handshake): the executor does it, and
    # the loop takes the socket over once it returns (attach). A connect we stop
    # waiting for is closed when it finishes.
    call = owner.loop.run_in_executor(None, _connect_call(client, cfg, *address))
    try:
        async with asyncio.timeout(cfg.connect_timeout_s):
            try:
                rc = await asyncio.shield(call)
            except BaseException:
                call.add_done_callback(functools.partial(_discard_late_client, client))
                raise
            if rc != SUCCESS:
                raise MqttConnectError(mqtt.error_string(rc), url=owner.url)
            conn.attach()
            await conn.connack  # session present and Receive Maximum: taken in connack()
    except TimeoutError as exc:
        conn.kill("connect timed out")
        raise MqttConnectError(
            f"no connection within {cfg.connect_timeout_s} s",
            url=owner.url,
            errno=errno_codes.ETIMEDOUT,
        ) from exc
    except MqttConnectError:
        conn.kill("connect failed")
        raise
    except ssl.SSLError as exc:
        _close_abandoned_sockets(exc)
        raise MqttConnectError(f"TLS: {exc.reason or exc}", url=owner.url) from exc
    except OSError as exc:
        raise MqttConnectError(exc.strerror or str(exc), url=owner.url, errno=exc.errno) from exc
    except ValueError as exc:  # paho: bad host, certificate name mismatch
        _close_abandoned_sockets(exc)
        raise MqttConnectError(str(exc), url=owner.url) from exc
    except BaseException:
        conn.kill("cancelled")
        raise
    return conn


def _discard_late_client(client: mqtt.Client, fut: asyncio.Future[Any]) -> None:
    """A connect() that finished in the executor after we gave up on it: close it."""
    if fut.cancelled() or fut.exception() is not None:
        return
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _close_abandoned_sockets(exc: BaseException) -> None:
    """Close the socket of a failed TLS handshake, which paho leaves to the garbage collector
    (``Client._ssl_wrap_socket`` does not close it when the handshake or the host name check
    raises). Only the frames of ``exc``'s traceback hold it, and the futures it travelled
    through keep those in reference cycles: without this, the descriptor stays open until
    some later gc run (a ResourceWarning far from its cause; one per failed attempt)."""
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket) and value.fileno() != -1:
                value.close()
        tb = tb.tb_next
