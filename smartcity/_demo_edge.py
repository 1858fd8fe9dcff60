"""The demo's real edge agents, reading the simulated city's devices.

::

    DeviceCity (simulators) ── ptys: firmware protocol ──▶ edge agent demo-cabinet
                            ── ptys: NMEA 0183 ──────────▶ edge agent demo-bus
                            ── Modbus TCP meters ────────▶ edge agent demo-substation
                            ── JSON on the local broker ─▶ edge agent demo-airstation
                                                               │ MQTT QoS 1, spool, birth
                                                               ▼
                                                        the demo's central broker

Each agent is a real ``python -m edge_agent run`` process with its own YAML config (written
under ``var/edge/``), spool and state directory, exactly as on a gateway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from simulators import KIND_SPECS, DeviceEndpoints

__all__ = ["EDGE_PREFIX", "edge_configs", "write_configs"]

EDGE_PREFIX: Final = "demo-"
_FIRMWARE_BASE_ID: Final = 0x0A00  # simulators' DeviceCity numbers its firmware devices so
_MQTT_KINDS: Final = ("air", "noise", "parking")


def _base(gateway: str, *, broker: tuple[str, int], topic_root: str, state: Path) -> dict[str, Any]:
    host, port = broker
    return {
        "gateway": {"id": gateway, "state_dir": str(state / gateway)},
        "broker": {"host": host, "port": port, "topic_root": topic_root},
        "spool": {"budget_bytes": "64MiB", "synchronous": "normal"},
        "batch": {"max_readings": 200, "max_age_s": 1.0},
        "health": {"interval_s": 10},
    }


def _units(kind: str) -> dict[str, dict[str, str]]:
    spec = KIND_SPECS[kind]  # type: ignore[index]
    return {spec.measurement: {f.name: f.unit for f in spec.fields if f.unit != "-"}}


def edge_configs(
    endpoints: DeviceEndpoints,
    *,
    broker: tuple[str, int],
    topic_root: str,
    state: Path,
) -> dict[str, dict[str, Any]]:
    """One config per demo gateway, from what the simulated devices serve."""
    configs: dict[str, dict[str, Any]] = {}
    if endpoints.firmware:
        cfg = _base(f"{EDGE_PREFIX}cabinet", broker=broker, topic_root=topic_root, state=state)
        names = list(endpoints.firmware)
        cfg["devices"] = [{"id": d, "kind": "loop-detector", "measurements": _units("loop")}
                          for d in names]  # fmt: skip
        cfg["inputs"] = [
            {
                "type": "firmware",
                "name": f"fw-{i}",
                "serial": {"url": path, "baudrate": 115200},
                "device_names": {_FIRMWARE_BASE_ID + i: device},
            }
            for i, (device, path) in enumerate(endpoints.firmware.items())
        ]
        cfg["processors"] = [
            {
                "match": {"measurement": "TrafficFlowObserved", "field": "averageVehicleSpeed"},
                "stages": [
                    {"type": "validity", "min": 0, "max": 250},
                    {"type": "hampel", "window": 7, "k": 3.0, "min_deviation": 2.0},
                ],
            }
        ]
        configs[cfg["gateway"]["id"]] = cfg
    if endpoints.nmea:
        cfg = _base(f"{EDGE_PREFIX}bus", broker=broker, topic_root=topic_root, state=state)
        cfg["devices"] = [{"id": d, "kind": "nmea-gps", "measurements": _units("bus")}
                          for d in endpoints.nmea]  # fmt: skip
        cfg["inputs"] = [
            {
                "type": "nmea",
                "name": f"gps-{i}",
                "serial": {"url": path, "baudrate": 9600},
                "device": device,
            }
            for i, (device, path) in enumerate(endpoints.nmea.items())
        ]
        configs[cfg["gateway"]["id"]] = cfg
    if endpoints.modbus:
        cfg = _base(f"{EDGE_PREFIX}substation", broker=broker, topic_root=topic_root, state=state)
        cfg["devices"] = [{"id": d, "kind": "energy-meter", "measurements": _units("energy")}
                          for d in endpoints.modbus]  # fmt: skip
        cfg["inputs"] = [
            {
                "type": "modbus",
                "name": f"meter-{i}",
                "device": device,
                "tcp": {"host": server["host"], "port": server["port"]},
                "register_map": server["map"],
                "unit_id": server["unit"],
                "intervals": {"instantaneous": 2.0, "energy": 10.0},
            }
            for i, (device, server) in enumerate(endpoints.modbus.items())
        ]
        configs[cfg["gateway"]["id"]] = cfg
    if endpoints.mqtt and endpoints.mqtt_broker:
        cfg = _base(f"{EDGE_PREFIX}airstation", broker=broker, topic_root=topic_root, state=state)
        local = endpoints.mqtt_broker.removeprefix("mqtt://")
        local_host, _, local_port = local.partition(":")
        kinds = {topic.split("/")[-2] for topic in endpoints.mqtt.values()}
        prefix = next(iter(endpoints.mqtt.values())).rsplit("/", 2)[0]
        device_level = prefix.count("/") + 2
        cfg["devices"] = [
            {"id": d, "kind": t.split("/")[-2], "measurements": _units(t.split("/")[-2])}
            for d, t in endpoints.mqtt.items()
        ]
        cfg["inputs"] = [
            {
                "type": "mqtt",
                "name": "local-sensors",
                "host": local_host,
                "port": int(local_port or 1883),
                "subscriptions": [
                    {
                        "topic": f"{prefix}/{kind}/+",
                        "device": f"{{{device_level}}}",
                        "measurement": KIND_SPECS[kind].measurement,  # type: ignore[index]
                        "format": "json",
                        "fields": {f.name: f"$.{f.name}" for f in KIND_SPECS[kind].fields},  # type: ignore[index]
                        "timestamp": "$.ts",
                        "timestamp_unit": "ms",
                    }
                    for kind in sorted(kinds)
                    if kind in _MQTT_KINDS
                ],
            }
        ]
        configs[cfg["gateway"]["id"]] = cfg
    return configs


def write_configs(configs: dict[str, dict[str, Any]], directory: Path) -> dict[str, Path]:
    """Write each config as ``<gateway>.yaml``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for gateway, cfg in configs.items():
        path = directory / f"{gateway}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        paths[gateway] = path
    return paths
