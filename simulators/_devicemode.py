"""Device mode: the city as devices that real edge agents read.

::

    city thread ──step──▶ FaultPlan.apply ──▶ snapshot (dict, swapped whole: the hand-off)
                                                │ read by
     ┌──────────────────────────────────────────┼──────────────────────────────────────┐
     FirmwareDevice on a PtyPort (thread)       NmeaDevice subclass on a PtyPort (thread)
       loop detector: per lane intensity,         the bus's position, speed, heading
       speed, occupancy, count                  ModbusMeterServer per energy meter
       + serial noise / CRC errors (faults)       (asyncio loop thread; eastron-sdm630 map)
       + clock drift (device clock offset)      local MQTT sensors: JSON per step
                                                  (foundation.mqtt session)
    one asyncio loop thread (sim-devices.loop) runs the Modbus TCP servers and the MQTT
    session; the city thread hands it each step's sensor documents (call_soon_threadsafe)

Devices stamp readings with their own clocks (wall time), so device mode runs at real
time by default; a ``speed`` above 1 only fast-forwards the values (rush hour in minutes).
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import contextlib
import json
import math
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from foundation import StartableThread
from simulators._city import City
from simulators._errors import DeviceModeError
from simulators._faults import FaultPlan
from simulators._layout import build_layout
from simulators._scenario import Scenario

__all__ = ["FIRMWARE_BOARD_BASE", "DeviceCity", "DeviceEndpoints"]

#: Firmware board ids: the i-th loop-detector board announces FIRMWARE_BOARD_BASE + i
#: (``DeviceEndpoints.firmware_boards`` lists them per device).
FIRMWARE_BOARD_BASE: Final = 0x0A00

_LOOP_FIELDS = (
    ("intensity", "F32", "veh/h"),
    ("averageVehicleSpeed", "F32", "km/h"),
    ("occupancy", "F32", "1"),
    ("vehicleCount", "U32", "1"),
)


@dataclass(slots=True)
class DeviceEndpoints:
    """Where the devices are: pty links, Modbus TCP ports, MQTT topics."""

    firmware: dict[str, str] = field(default_factory=dict)
    #: device id -> the board id its firmware announces (an agent's ``device_names`` key).
    firmware_boards: dict[str, int] = field(default_factory=dict)
    nmea: dict[str, str] = field(default_factory=dict)
    modbus: dict[str, dict[str, Any]] = field(default_factory=dict)
    mqtt: dict[str, str] = field(default_factory=dict)
    mqtt_broker: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "firmware": self.firmware,
            "firmware_boards": self.firmware_boards,
            "nmea": self.nmea,
            "modbus": self.modbus,
            "mqtt": {"broker": self.mqtt_broker, "topics": self.mqtt},
        }


class DeviceCity(StartableThread):
    """Serve a scenario's city as devices. A context manager; not re-entrant.

    ``with DeviceCity(scenario, directory=tmp, mqtt_url="mqtt://127.0.0.1:1883") as city:``
    then point edge agents at ``city.endpoints``.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        directory: str | Path,
        mqtt_url: str | None = None,
        start_ns: int | None = None,
        modbus_port: int = 0,
    ) -> None:
        self.scenario = scenario
        #: First Modbus TCP port (meter i listens on modbus_port + i); 0: free ports.
        self.modbus_port = modbus_port
        self.directory = Path(directory)
        self.mqtt_url = mqtt_url
        self.layout = build_layout(scenario)
        self.city = City(scenario, self.layout)
        self.start_ns = scenario.start_ns() if start_ns is None else start_ns
        self.plan = FaultPlan(self.layout, start_ns=self.start_ns, seed=scenario.seed)
        for spec in scenario.faults:
            self.plan.add(spec)
        self.endpoints = DeviceEndpoints()
        #: The latest observed values: kind -> field -> list (per row); replaced whole.
        self.snapshot: dict[str, dict[str, list[Any]]] = {}
        self.sim_ns = self.start_ns
        super().__init__()
        self._devices: list[Any] = []
        self._ports: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._modbus_servers: list[Any] = []
        self._mqtt: Any = None  # foundation.mqtt.MqttSession, imported only when used
        self._mqtt_stop: asyncio.Event | None = None
        self._mqtt_task: concurrent.futures.Future[None] | None = None
        self._mqtt_rows: list[tuple[str, str, int]] = []
        self.errors: list[BaseException] = []

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._step()  # values exist before any device samples
        try:
            self._start_firmware()
            self._start_nmea()
            self._start_modbus()
            self._start_mqtt()
        except DeviceModeError:
            self.stop()
            raise
        except (OSError, ImportError) as exc:
            self.stop()
            raise DeviceModeError(f"device mode failed to start: {exc}") from exc
        self._start_thread("sim-devices.city")

    def stop(self) -> None:
        super().stop()
        for dev in self._devices:
            dev.stop()
        for port in self._ports:
            port.unplug()
        self._devices.clear()
        self._ports.clear()
        if self._loop is not None:
            loop = self._loop
            if self._mqtt_stop is not None and self._mqtt_task is not None:
                from foundation.mqtt import MqttError

                loop.call_soon_threadsafe(self._mqtt_stop.set)
                # A failure to connect was reported by start() already.
                with contextlib.suppress(concurrent.futures.TimeoutError, MqttError):
                    self._mqtt_task.result(10)
            self._mqtt = self._mqtt_stop = self._mqtt_task = None
            fut = asyncio.run_coroutine_threadsafe(self._close_modbus(), loop)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                fut.result(10)
            loop.call_soon_threadsafe(loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(5)
            self._loop = self._loop_thread = None

    # -- the city thread -------------------------------------------------------------------
    def _step(self) -> None:
        t = self.sim_ns
        self.city.leak_m3h = self.plan.leak_m3h(t)
        frame = self.plan.apply(self.city.step(t))
        snap: dict[str, dict[str, list[Any]]] = {}
        for kind, kf in frame.kinds.items():
            values: dict[str, list[Any]] = {n: v.tolist() for n, v in kf.values.items()}
            values["_valid"] = kf.valid.tolist()
            values["_ts"] = kf.ts.tolist()
            snap[kind] = values
        self.snapshot = snap  # one reference swap: readers see the old or the new, whole

    def _run(self) -> None:
        tick_ns = round(self.scenario.tick_s * 1e9)
        speed = self.scenario.speed if self.scenario.speed > 0 else 1.0
        period = self.scenario.tick_s / speed
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                return
            self.sim_ns += tick_ns
            self._step()
            self._device_faults()
            self._publish_mqtt()

    # -- firmware boards (loop detectors) --------------------------------------------------
    def _start_firmware(self) -> None:
        from firmware_bridge import Channel, ValueType
        from simulators.devices import FirmwareDevice, FirmwareDeviceConfig, PtyPort

        loops = self.layout.kinds.get("loop")
        n = 0 if loops is None else min(self.scenario.devices.firmware, loops.sensors)
        interval_ms = round(self.scenario.devices.sample_interval_s * 1000)
        for i in range(n):
            assert loops is not None
            rows = np.flatnonzero(loops.row_sensor == i).tolist()
            channels = []
            for lane, _row in enumerate(rows, start=1):
                for j, (name, vt, unit) in enumerate(_LOOP_FIELDS):
                    channels.append(
                        Channel(
                            index=(lane - 1) * len(_LOOP_FIELDS) + j,
                            value_type=ValueType[vt],
                            measurement="TrafficFlowObserved",
                            field=name,
                            unit=unit,
                            tags={"lane": str(lane)},
                        )
                    )
            device_id = loops.device_ids[i]
            port = PtyPort(self.directory / f"fw-{device_id}")
            row_of = {ch.index: rows[ch.index // len(_LOOP_FIELDS)] for ch in channels}
            dev = FirmwareDevice(
                port,
                FirmwareDeviceConfig(
                    device_id=FIRMWARE_BOARD_BASE + i,
                    sample_interval_ms=interval_ms,
                    channels=tuple(channels),
                ),
                values=self._loop_values(row_of),
            )
            port.plug()
            dev.start()
            self._ports.append(port)
            self._devices.append(dev)
            self.endpoints.firmware[device_id] = str(port.link_path)
            self.endpoints.firmware_boards[device_id] = FIRMWARE_BOARD_BASE + i

    def _loop_values(self, row_of: dict[int, int]) -> Any:
        def values(channel: Any, _t: float) -> float | int | bool | None:
            snap = self.snapshot.get("loop", {})
            col = snap.get(channel.field)
            if col is None:
                return 0
            row = row_of[channel.index]
            if not snap["_valid"][row]:
                return None  # a dropout: the board leaves this lane out of its frame
            value = col[row]
            return int(value) if channel.field == "vehicleCount" else float(value)

        return values

    # -- GPS receivers (buses) -----------------------------------------------------------------
    def _start_nmea(self) -> None:
        from simulators.devices import NmeaDevice, NmeaDeviceConfig, PtyPort

        buses = self.layout.kinds.get("bus")
        n = 0 if buses is None else min(self.scenario.devices.nmea, buses.sensors)
        owner = self

        class CityGps(NmeaDevice):
            """A GPS receiver reporting the simulated bus ``index``."""

            index = 0

            def epoch(self, unix_s: float) -> bytes:
                bus = owner.snapshot.get("bus", {})
                if bus and not bus["_valid"][self.index]:
                    return b""  # a dropout: this epoch's fix is not sent
                if bus:
                    self.config = replace(
                        self.config,
                        speed_kmh=float(bus["speed"][self.index]),
                        heading=float(bus["heading"][self.index]),
                    )
                return super().epoch(unix_s)

            def position(self, unix_s: float) -> tuple[float, float]:
                bus = owner.snapshot.get("bus", {})
                if not bus:
                    return super().position(unix_s)
                return float(bus["latitude"][self.index]), float(bus["longitude"][self.index])

        for i in range(n):
            assert buses is not None
            device_id = buses.device_ids[i]
            port = PtyPort(self.directory / f"gps-{device_id}", baudrate=9600)
            gps = CityGps(
                port,
                NmeaDeviceConfig(rate_hz=1.0 / max(self.scenario.devices.sample_interval_s, 0.1)),
            )
            gps.index = i
            port.plug()
            gps.start()
            self._ports.append(port)
            self._devices.append(gps)
            self.endpoints.nmea[device_id] = str(port.link_path)

    # -- Modbus TCP meters (energy) ----------------------------------------------------------
    def _start_modbus(self) -> None:
        energy = self.layout.kinds.get("energy")
        n = 0 if energy is None else min(self.scenario.devices.modbus_meters, energy.sensors)
        if n == 0:
            return
        from firmware_bridge import load_register_map
        from simulators.devices import ModbusMeterServer

        regmap = load_register_map("eastron-sdm630")
        loop = self._event_loop()
        assert energy is not None
        for i in range(n):
            port_no = 0 if self.modbus_port == 0 else self.modbus_port + i
            server = ModbusMeterServer({1: regmap}, port=port_no, values=self._meter_values(i))
            fut = asyncio.run_coroutine_threadsafe(server.__aenter__(), loop)
            try:
                fut.result(10)
            except (OSError, TimeoutError) as exc:
                raise DeviceModeError(f"Modbus TCP server did not start: {exc}") from exc
            self._modbus_servers.append(server)
            self.endpoints.modbus[energy.device_ids[i]] = {
                "host": server.host,
                "port": server.port,
                "unit": 1,
                "map": "eastron-sdm630",
            }

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop thread of the Modbus servers and the MQTT session, started once."""
        if self._loop is not None:
            return self._loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._loop_thread = threading.Thread(target=serve, name="sim-devices.loop", daemon=True)
        self._loop_thread.start()
        ready.wait(5)
        self._loop = loop
        return loop

    async def _close_modbus(self) -> None:
        for server in self._modbus_servers:
            await server.__aexit__(None, None, None)
        self._modbus_servers.clear()

    def _meter_values(self, i: int) -> Any:
        from simulators.devices import meter_values

        def values(name: str, t: float) -> float:
            snap = self.snapshot.get("energy", {})
            if not snap:
                return meter_values(name, t)
            base = name[:-2] if name[-2:] in ("L1", "L2", "L3") else name
            per_phase = base != name
            if base in ("activePower", "current", "reactivePower"):
                v = float(snap[base][i])
                return v / 3 if per_phase else v
            if base in ("voltage", "frequency", "powerFactor", "totalActiveEnergyImport"):
                return float(snap[base][i])
            if base == "totalActiveEnergyExport":
                return 0.0
            return meter_values(name, t)

        return values

    # -- local MQTT sensors (air, noise, parking) --------------------------------------------
    def _start_mqtt(self) -> None:
        if self.mqtt_url is None or self.scenario.devices.mqtt_sensors == 0:
            return
        from foundation.mqtt import MqttError, MqttSession, SessionConfig
        from simulators.fleet import BrokerUrl

        url = BrokerUrl.parse(self.mqtt_url)
        rows: list[tuple[str, str, int]] = []
        for kind in ("air", "noise", "parking"):
            k = self.layout.kinds.get(kind)
            if k is not None:
                rows += [(kind, k.device_ids[i], i) for i in range(k.sensors)]
        rows = rows[: self.scenario.devices.mqtt_sensors]
        session = MqttSession(
            SessionConfig(
                host=url.host,
                port=url.port,
                client_id=f"sim-sensors-{self.scenario.name}",
                # Every sensor's reading of one step may wait for its PUBACK at once.
                max_inflight=max(20, 2 * len(rows)),
            )
        )
        loop = self._event_loop()
        stop = asyncio.Event()
        up: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def hold() -> None:
            try:
                async with session:
                    up.set_result(None)
                    await stop.wait()
            except BaseException as exc:
                if not up.done():
                    up.set_exception(exc)
                raise

        self._mqtt_task = asyncio.run_coroutine_threadsafe(hold(), loop)
        self._mqtt_stop = stop
        try:
            up.result(15)
        except (MqttError, concurrent.futures.TimeoutError) as exc:
            raise DeviceModeError(f"local broker {self.mqtt_url}: {exc}") from exc
        self._mqtt = session
        self._mqtt_rows = rows
        self.endpoints.mqtt_broker = self.mqtt_url
        topic = self.scenario.devices.mqtt_topic
        for kind, device, _ in rows:
            self.endpoints.mqtt[device] = f"{topic}/{kind}/{device}"
        self._publish_mqtt()

    def _publish_mqtt(self) -> None:
        """Hand this step's sensor documents to the loop thread (called by the city thread)."""
        session, loop = self._mqtt, self._loop
        if session is None or loop is None:
            return
        topic = self.scenario.devices.mqtt_topic
        now_ms = time.time_ns() // 1_000_000
        docs: list[tuple[str, bytes]] = []
        for kind, device, i in self._mqtt_rows:
            snap = self.snapshot.get(kind)
            if not snap or not snap["_valid"][i]:
                continue
            doc: dict[str, Any] = {"ts": now_ms}
            for name, col in snap.items():
                if not name.startswith("_"):
                    v = col[i]
                    doc[name] = round(v, 4) if isinstance(v, float) else v
            docs.append((f"{topic}/{kind}/{device}", json.dumps(doc).encode()))
        with contextlib.suppress(RuntimeError):  # the loop is closing: the step is lost
            loop.call_soon_threadsafe(_publish_all, session, docs)

    # -- serial faults ---------------------------------------------------------------------
    def _device_faults(self) -> None:
        t = self.sim_ns
        by_id = {dev.config.device_id: dev for dev in self._devices if hasattr(dev, "send_raw")}
        loops = self.layout.kinds.get("loop")
        if loops is None:
            return
        index = {d: i for i, d in enumerate(loops.device_ids)}
        speed = self.scenario.speed if self.scenario.speed > 0 else 1.0
        period = self.scenario.tick_s / speed
        rng = np.random.default_rng([self.scenario.seed, t % (2**32)])
        for device, spec in self.plan.devices_with("serial_noise", t):
            dev = by_id.get(0x0A00 + index.get(device, -1))
            if dev is not None:
                n = max(1, round(spec.bytes_per_s * period))
                dev.send_raw(rng.integers(1, 256, n, dtype=np.uint8).tobytes())
        for device, spec in self.plan.devices_with("crc_errors", t):
            dev = by_id.get(0x0A00 + index.get(device, -1))
            if dev is not None:
                for _ in range(max(1, math.ceil(spec.probability * 3))):
                    dev.send_raw(_bad_crc_frame(dev.config.device_id))
        drifting = dict(self.plan.devices_with("clock_drift", t))
        for dev in by_id.values():
            device = loops.device_ids[dev.config.device_id - 0x0A00]
            drift = drifting.get(device)
            dev.clock_offset_ms = (
                0 if drift is None else int((t - self.start_ns) / 1e6 * drift.ppm * 1e-6)
            )


def _publish_all(session: Any, docs: list[tuple[str, bytes]]) -> None:
    """In the loop thread: publish QoS 1 without waiting. A sensor offline (session
    reconnecting) or with its window full loses that reading, as a real one would."""
    from foundation.mqtt import MqttError

    for topic, payload in docs:
        try:
            session.publish_nowait(topic, payload, qos=1).add_done_callback(_retrieve)
        except MqttError:
            return


def _retrieve(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()


def _bad_crc_frame(device_id: int) -> bytes:
    """A READINGS frame whose CRC is wrong (valid COBS, so the receiver counts crc_error)."""
    from cobs import cobs

    payload = struct.pack(">QB", time.time_ns() // 1_000_000, 0)
    body = struct.pack(">BBIH", 1, 0x02, device_id, 0xFFFF) + payload
    crc = binascii.crc_hqx(body, 0xFFFF) ^ 0x5A5A
    return b"\x00" + bytes(cobs.encode(body + crc.to_bytes(2, "big"))) + b"\x00"
