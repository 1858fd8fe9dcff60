"""Whole simulated gateways publishing straight onto a broker with the wire contract.

Each gateway owns a few devices of mixed kinds (loop detectors, buses, car parks, air
quality, energy meters); every tick it produces one reading per device with numpy in one
vectorised step for the whole fleet, batches them per gateway with a monotonic ``seq``,
publishes QoS 1 with a retained birth and a last-will death, and records what it emitted in a
:class:`Ledger` so that loss and duplication can be measured downstream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

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

__all__ = ["FleetConfig", "GatewayFleet", "Ledger"]

_KINDS: Final = ("loop", "bus", "parking", "air", "energy")
_MEASUREMENT: Final = {
    "loop": "TrafficFlowObserved",
    "bus": "Vehicle",
    "parking": "OffStreetParking",
    "air": "AirQualityObserved",
    "energy": "ThreePhaseAcMeasurement",
}


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    gateways: int = 200
    devices_per_gateway: int = 5
    interval_s: float = 1.0
    seed: int = 1
    topic_root: str = "sc"
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    centre: tuple[float, float] = (59.9139, 10.7522)


@dataclass
class Ledger:
    """What the fleet emitted: readings and batches per gateway."""

    readings: int = 0
    batches: int = 0
    per_gateway_seq: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, batch: Batch) -> None:
        with self.lock:
            self.readings += len(batch.readings)
            self.batches += 1
            self.per_gateway_seq[batch.gateway] = batch.seq


class GatewayFleet:
    """Simulate ``config.gateways`` gateways over one MQTT connection each-ish (one client).

    One MQTT client carries the whole fleet (gateway mode for load); presence messages are
    still per gateway on their own topics.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.topics = Topics(config.topic_root)
        self.ledger = Ledger()
        self._rng = np.random.default_rng(config.seed)
        n = config.gateways * config.devices_per_gateway
        self._kind_index = np.arange(n) % len(_KINDS)
        lat0, lon0 = config.centre
        self._lat = lat0 + self._rng.normal(0, 0.02, n)
        self._lon = lon0 + self._rng.normal(0, 0.04, n)
        self._heading = self._rng.uniform(0, 360, n)
        self._seq = [0] * config.gateways
        self._stop = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fleet-{config.seed}", protocol=mqtt.MQTTv5
        )
        if config.username:
            self._client.username_pw_set(config.username, config.password)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)

    def gateway_id(self, g: int) -> str:
        return f"sim-gw-{g:04d}"

    def device_id(self, g: int, d: int) -> str:
        kind = _KINDS[(g * self.config.devices_per_gateway + d) % len(_KINDS)]
        return f"{kind}-{g:04d}-{d}"

    def birth(self, g: int) -> Birth:
        per = self.config.devices_per_gateway
        devices = []
        for d in range(per):
            i = g * per + d
            kind = _KINDS[self._kind_index[i]]
            devices.append(
                DeviceInfo(
                    id=self.device_id(g, d),
                    kind=kind,
                    measurements={_MEASUREMENT[kind]: {}},
                    location=Location(lat=float(self._lat[i]), lon=float(self._lon[i])),
                )
            )
        return Birth(
            gw=self.gateway_id(g), ts=time.time_ns(), agent="smartcity-sim", devices=devices
        )

    def tick(self, now_ns: int) -> list[Batch]:
        """One reading per device for the whole fleet, vectorised; one batch per gateway."""
        cfg = self.config
        n = cfg.gateways * cfg.devices_per_gateway
        hour = (now_ns / 3.6e12) % 24
        rush = 1.0 + 0.8 * np.exp(-((hour - 8) ** 2) / 2) + 0.7 * np.exp(-((hour - 17) ** 2) / 2)
        noise = self._rng.normal(0, 1, (n, 3))
        flow = np.clip(600 * rush + 80 * noise[:, 0], 0, None)
        occupancy = np.clip(flow / 2400 + 0.02 * noise[:, 1], 0, 1)
        speed = np.clip(60 * (1 - occupancy) + 3 * noise[:, 2], 3, None)
        self._heading = (self._heading + 5 * noise[:, 0]) % 360
        self._lat += np.cos(np.radians(self._heading)) * 1e-4
        self._lon += np.sin(np.radians(self._heading)) * 2e-4
        batches = []
        per = cfg.devices_per_gateway
        for g in range(cfg.gateways):
            readings = []
            for d in range(per):
                i = g * per + d
                kind = _KINDS[self._kind_index[i]]
                ts = now_ns + i
                fields: dict[str, float | int | bool | str]
                if kind == "loop":
                    fields = {
                        "intensity": float(flow[i]),
                        "averageVehicleSpeed": float(speed[i]),
                        "occupancy": float(occupancy[i]),
                    }
                elif kind == "bus":
                    fields = {
                        "latitude": float(self._lat[i]),
                        "longitude": float(self._lon[i]),
                        "speed": float(speed[i] / 2),
                        "heading": float(self._heading[i]),
                    }
                elif kind == "parking":
                    free = int(400 * (1 - occupancy[i]))
                    fields = {"availableSpotNumber": free, "totalSpotNumber": 400}
                elif kind == "air":
                    fields = {"pm25": float(5 + 20 * occupancy[i]), "no2": float(10 + flow[i] / 30)}
                else:
                    fields = {"activePower": float(1000 + 50 * noise[i, 1])}
                readings.append(
                    Reading(
                        device=self.device_id(g, d),
                        measurement=_MEASUREMENT[kind],
                        ts=ts,
                        fields=fields,
                    )
                )
            batches.append(Batch(gateway=self.gateway_id(g), seq=self._seq[g], readings=readings))
            self._seq[g] += 1
        return batches

    def run(self, duration_s: float | None = None) -> None:
        """Connect, announce every gateway, publish a tick per interval until stopped."""
        client = self._client
        client.connect(self.config.host, self.config.port, keepalive=30)
        client.loop_start()
        try:
            for g in range(self.config.gateways):
                client.publish(
                    self.topics.status(self.gateway_id(g)),
                    encode_message(self.birth(g)),
                    qos=1,
                    retain=True,
                )
            deadline = None if duration_s is None else time.monotonic() + duration_s
            next_tick = time.monotonic()
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                pending = []
                for batch in self.tick(time.time_ns()):
                    info = client.publish(
                        self.topics.telemetry(batch.gateway), encode_batch(batch), qos=1
                    )
                    pending.append((info, batch))
                for info, batch in pending:
                    info.wait_for_publish(timeout=30)
                    self.ledger.record(batch)
                next_tick += self.config.interval_s
                self._stop.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            for g in range(self.config.gateways):
                client.publish(
                    self.topics.status(self.gateway_id(g)),
                    encode_message(
                        Death(gw=self.gateway_id(g), ts=time.time_ns(), reason="shutdown")
                    ),
                    qos=1,
                    retain=True,
                ).wait_for_publish(timeout=5)
            client.disconnect()
            client.loop_stop()

    def stop(self) -> None:
        self._stop.set()
