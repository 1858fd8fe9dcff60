"""Hostile gateways: what a gateway with leaked credentials or broken firmware sends on its
own topics, on purpose (fault ``hostile``, docs/simulators.md).

A gateway under the fault stops producing honest readings and publishes, one message per
step, the next case of :data:`HOSTILE_CASES` in turn::

    field_type            a string where the vocabulary says float ("intensity": "x")
    reserved_measurement  a reading under ``ingest_batch`` with string seq/readings fields
    future_timestamp      a well-formed reading stamped days ahead of the wall clock
    control_characters    a string field with control characters and a trailing newline
    bad_utf8              one reading's device id with an invalid UTF-8 byte, one valid reading
    deep_nesting          a field value nested :data:`NESTING_DEPTH` arrays deep
    huge_control          control characters only, just under MAX_PAYLOAD_BYTES
    seq_jump              two well-formed batches, seq 0 then seq 2^62

Pure payload building (:func:`hostile_messages`) plus the tally of what was sent
(:class:`HostileTally`). Hostile messages never enter the ledger: the ledger is what the
platform must store, and a hostile message promises nothing (some of it, the ``seq_jump``
readings, is even well-formed and stored).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from telemetry import MAX_PAYLOAD_BYTES

__all__ = [
    "HOSTILE_CASES",
    "NESTING_DEPTH",
    "HostileCase",
    "HostileMessage",
    "HostileTally",
    "hostile_messages",
]

HostileCase: TypeAlias = Literal[
    "field_type",
    "reserved_measurement",
    "future_timestamp",
    "control_characters",
    "bad_utf8",
    "deep_nesting",
    "huge_control",
    "seq_jump",
]
HOSTILE_CASES: Final[tuple[HostileCase, ...]] = HostileCase.__args__  # type: ignore[attr-defined]
#: Arrays inside arrays in the ``deep_nesting`` case (2 bytes a level: well within the size limit).
NESTING_DEPTH: Final = 20_000
#: How far ahead of the wall clock ``future_timestamp`` stamps its reading.
FUTURE_S: Final = 3 * 86_400
#: Where ``seq_jump`` jumps to.
SEQ_JUMP: Final = 2**62
_MEASUREMENT: Final = "TrafficFlowObserved"


@dataclass(frozen=True, slots=True)
class HostileMessage:
    """One hostile publish: its case, the payload, and the well-formed readings in it."""

    case: HostileCase
    payload: bytes
    readings: int


def _batch(gateway: str, seq: int, readings: list[dict[str, Any]]) -> bytes:
    return json.dumps({"v": 1, "gw": gateway, "seq": seq, "r": readings}).encode()


def _reading(
    gateway: str, ts: int, fields: dict[str, Any], m: str = _MEASUREMENT
) -> dict[str, Any]:
    return {"d": f"{gateway}-d0", "m": m, "t": ts, "f": fields}


def hostile_messages(
    gateway: str, case: HostileCase, *, seq: int, sim_ns: int, wall_ns: int
) -> list[HostileMessage]:
    """The messages of one ``case`` from ``gateway``: stamped at the simulated time
    ``sim_ns`` (the honest gateways' shard) unless the case is about time; ``seq`` numbers
    the cases that need one (``seq_jump`` uses 0 and 2^62)."""
    if case == "field_type":
        payload = _batch(gateway, seq, [
            _reading(gateway, sim_ns, {"intensity": "x", "averageVehicleSpeed": "fast"}),
        ])  # fmt: skip
        return [HostileMessage(case, payload, 0)]
    if case == "reserved_measurement":
        fields = {"seq": "x", "readings": "x", "rejected": "x", "dup": "x"}
        payload = _batch(gateway, seq, [_reading(gateway, sim_ns, fields, m="ingest_batch")])
        return [HostileMessage(case, payload, 0)]
    if case == "future_timestamp":
        ahead = wall_ns + FUTURE_S * 10**9
        payload = _batch(gateway, seq, [_reading(gateway, ahead, {"intensity": 1.0})])
        return [HostileMessage(case, payload, 0)]
    if case == "control_characters":
        vehicle: dict[str, Any] = {
            "latitude": 59.9, "longitude": 10.75, "routeId": "31\x01\x07\x1b[2J\x7f\n",
        }  # fmt: skip
        payload = _batch(gateway, seq, [_reading(gateway, sim_ns, vehicle, m="Vehicle")])
        return [HostileMessage(case, payload, 0)]
    if case == "bad_utf8":
        good = json.dumps(_reading(gateway, sim_ns, {"intensity": 1.0})).encode()
        bad = good.replace(f'"{gateway}-d0"'.encode(), f'"{gateway}-\xff"'.encode("latin-1"))
        payload = (
            f'{{"v":1,"gw":"{gateway}","seq":{seq},"r":['.encode() + bad + b"," + good + b"]}"
        )
        return [HostileMessage(case, payload, 0)]
    if case == "deep_nesting":
        nested = "[" * NESTING_DEPTH + "]" * NESTING_DEPTH
        head = json.dumps(_reading(gateway, sim_ns, {"intensity": 0}))[:-3]  # cut "0}}"
        body = f'{{"v":1,"gw":"{gateway}","seq":{seq},"r":[{head}{nested}}}}}]}}'
        return [HostileMessage(case, body.encode(), 0)]
    if case == "huge_control":
        return [HostileMessage(case, b"\x01" * (MAX_PAYLOAD_BYTES - 1), 0)]
    if case == "seq_jump":
        jumps = (0, SEQ_JUMP)
        readings = [[_reading(gateway, sim_ns + i, {"intensity": 1.0 + i})] for i in range(2)]
        return [
            HostileMessage(case, _batch(gateway, s, r), 1)
            for s, r in zip(jumps, readings, strict=True)
        ]
    raise ValueError(f"unknown hostile case {case!r}")


@dataclass(slots=True)
class _Counts:
    sent: int = 0
    acked: int = 0
    refused: int = 0
    unrouted: int = 0
    not_sent: int = 0
    readings: int = 0


class HostileTally:
    """What hostile gateways sent, per case (thread-safe: the fleet writes, anyone reads).

    ``sent``: published; ``acked``: PUBACK success (0x10 counted as ``unrouted``);
    ``refused``: PUBACK >= 0x80; ``not_sent``: the window was full or the connection gone;
    ``readings``: well-formed readings in acknowledged messages (``seq_jump``), which the
    platform may store under the hostile gateway: never part of the honest ledger.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cases: dict[str, _Counts] = {}
        self.gateways: set[str] = set()

    def _c(self, case: str) -> _Counts:
        c = self._cases.get(case)
        if c is None:
            c = self._cases[case] = _Counts()
        return c

    def sent(self, gateway: str, case: str) -> None:
        with self._lock:
            self.gateways.add(gateway)
            self._c(case).sent += 1

    def not_sent(self, case: str) -> None:
        with self._lock:
            self._c(case).not_sent += 1

    def answered(self, case: str, reason_code: int, readings: int) -> None:
        with self._lock:
            c = self._c(case)
            if reason_code >= 0x80:
                c.refused += 1
            elif reason_code == 0x10:
                c.unrouted += 1
            else:
                c.acked += 1
                c.readings += readings

    @property
    def messages(self) -> int:
        with self._lock:
            return sum(c.sent for c in self._cases.values())

    def cases(self) -> dict[str, dict[str, int]]:
        """Per case: sent, acked, refused, unrouted, not_sent, readings."""
        with self._lock:
            return {
                case: {
                    "sent": c.sent, "acked": c.acked, "refused": c.refused,
                    "unrouted": c.unrouted, "not_sent": c.not_sent, "readings": c.readings,
                }
                for case, c in sorted(self._cases.items())
            }  # fmt: skip
