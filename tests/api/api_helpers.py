"""Helpers for API tests: start an API stack, publish like a gateway, wait for conditions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from api import ApiServer, ApiSettings, Database
from smartcity._localstack import Influxd, Mosquitto
from telemetry import (
    Batch,
    Birth,
    Death,
    DeviceInfo,
    Location,
    Reading,
    Topics,
    encode_batch,
    encode_message,
)

T = TypeVar("T")
ROLES = ("viewer", "operator", "engineer", "admin")


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)
        value = check()
    return value


@dataclass
class ApiStack:
    server: ApiServer
    db: Database
    keys: dict[str, str]
    root: str
    database: str
    mosquitto: Mosquitto
    influxd: Influxd
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, role: str | None = "viewer") -> httpx.Client:
        """An HTTP client sending ``role``'s key (``None``: no key)."""
        name = role or "anonymous"
        if name not in self.clients:
            headers = {"X-API-Key": self.keys[role]} if role else {}
            self.clients[name] = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        return self.clients[name]

    def get(self, path: str, role: str | None = "viewer", **kwargs: Any) -> httpx.Response:
        return self.client(role).get(path, **kwargs)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.server.stop()


def settings_for(
    mosquitto: Mosquitto, influxd: Influxd, *, root: str, database: str, db_url: str,
    **overrides: Any,
) -> ApiSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "topic_root": root,
        "influx_url": influxd.url,
        "influx_database": database,
        "database_url": db_url,
        "rate_limit_per_s": 10_000.0,
        "rate_limit_burst": 10_000,
        "auth_failures_per_s": 10_000.0,
        "auth_failures_burst": 10_000,
        "alert_tick_s": 0.1,
        "stream_heartbeat_s": 1.0,
        "completeness_refresh_s": 0.5,
        "completeness_settle_s": 0.5,
    }
    mqtt = {
        "host": mosquitto.host,
        "port": mosquitto.port,
        "client_id": f"api-test-{uuid.uuid4().hex[:8]}",
        **overrides.pop("mqtt", {}),
    }
    values.update(overrides, mqtt=mqtt)
    return ApiSettings(**values)


def start_stack(
    mosquitto: Mosquitto, influxd: Influxd, *, root: str, database: str, db_path: Path,
    **overrides: Any,
) -> ApiStack:
    url = f"sqlite:///{db_path}"
    db = Database(url)
    db.create_schema()
    keys = {role: db.create_key(name=f"test-{role}", role=role)[1] for role in ROLES}
    settings = settings_for(mosquitto, influxd, root=root, database=database, db_url=url,
                            **overrides)
    server = ApiServer(settings, db=db)
    server.start()
    return ApiStack(server, db, keys, root, database, mosquitto, influxd)


class Publisher:
    """Publishes births, deaths and batches as gateways do (QoS 1, births retained)."""

    def __init__(self, broker: Mosquitto, root: str) -> None:
        self.topics = Topics(root)
        self.seq: dict[str, int] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def birth(self, gw: str, devices: list[DeviceInfo], location: Location | None = None) -> None:
        message = Birth(gw=gw, ts=time.time_ns(), agent="test", devices=devices,
                        location=location)
        self.client.publish(
            self.topics.status(gw), encode_message(message), qos=1, retain=True
        ).wait_for_publish(5)

    def death(self, gw: str) -> None:
        message = Death(gw=gw, ts=time.time_ns(), reason="lost")
        self.client.publish(
            self.topics.status(gw), encode_message(message), qos=1, retain=True
        ).wait_for_publish(5)

    def clear_status(self, gw: str) -> None:
        self.client.publish(self.topics.status(gw), b"", qos=1, retain=True).wait_for_publish(5)

    def readings(self, gw: str, readings: list[Reading]) -> None:
        seq = self.seq.get(gw, 0)
        self.seq[gw] = seq + 1
        batch = Batch(gateway=gw, seq=seq, readings=readings)
        self.client.publish(
            self.topics.telemetry(gw), encode_batch(batch), qos=1
        ).wait_for_publish(5)

    def reading(self, gw: str, device: str, measurement: str, fields: dict[str, Any],
                ts: int | None = None, tags: dict[str, str] | None = None) -> int:
        ts = ts if ts is not None else time.time_ns()
        self.readings(gw, [Reading(device=device, measurement=measurement, ts=ts,
                                   fields=fields, tags=tags or {})])
        return ts

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def device(id_: str, kind: str, *, area: str | None = None, lat: float = 59.91,
           lon: float = 10.75, meta: dict[str, str] | None = None) -> DeviceInfo:
    return DeviceInfo(id=id_, kind=kind, location=Location(lat=lat, lon=lon, area=area),
                      meta=meta or {})
