"""One read of the agent's state, for every view of it.

::

    EdgeAgent.snapshot() ──▶ AgentSnapshot ──┬─▶ health_message() ──▶ Health (health topic,
    (inputs, processors' drops, spool,       │                        ``health`` command)
     uplink, checkpoints, process)           └─▶ _metrics collector ──▶ /metrics (scrape time)

A snapshot is frozen and holds copies, never the agent's live objects: a view cannot change
the agent, and two views of one snapshot agree. Drops are counted per stage and channel in
one table: the processors' stages and what the inputs could not parse (``input_parse``).
Process figures are cumulative (CPU seconds, like ``process_cpu_seconds_total``); the
health message's ``cpu_percent`` is a rate between two snapshots (:class:`CpuMeter`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edge_agent._spool import SpoolStats
from edge_agent._update import UpdateResult
from edge_agent._uplink import UplinkStats
from telemetry import Health, SpoolHealth, UpdateReport

__all__ = [
    "INPUT_LINK",
    "AgentSnapshot",
    "CheckpointStats",
    "ClockSnapshot",
    "CpuMeter",
    "InputSnapshot",
    "UplinkSnapshot",
    "disk_free_bytes",
    "dropped_with_links",
    "health_message",
    "process_cpu_s",
    "process_rss_bytes",
]

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_cpu_s() -> float:
    """CPU time (user + system, all threads) this process used so far."""
    t = os.times()
    return t.user + t.system


def process_rss_bytes() -> int:
    """Current RSS, from ``/proc/self/statm`` (psutil would cost ~1.3 MB of RSS for it)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource  # not Linux: the peak is the best the stdlib offers

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True, slots=True)
class CheckpointStats:
    """Checkpoints written this run and saved ones that could not be used."""

    written: int = 0
    #: Saved checkpoints (or parts) ignored because they were corrupt or did not fit.
    ignored: int = 0
    last_bytes: int = 0
    last_ms: float = 0.0
    restored_channels: int = 0
    restored_windows: int = 0
    #: Windows closed early because the processor config changed (restart or remote).
    closed_windows: int = 0


@dataclass(frozen=True, slots=True)
class UplinkSnapshot:
    """The uplink's link state and counters (:class:`edge_agent._uplink.UplinkStats`)."""

    #: ``down`` | ``connecting`` | ``up``
    state: str
    #: Connected to the broker right now (``edge_uplink_up``).
    connected: bool
    connects: int
    resumed_sessions: int
    published_batches: int
    acked_batches: int
    acked_readings: int
    resent_batches: int
    unrouted_batches: int
    connect_failures: int = 0
    losses: int = 0
    last_error: str | None = None
    last_errno: str | None = None

    @classmethod
    def of(cls, stats: UplinkStats, *, connected: bool) -> UplinkSnapshot:
        return cls(
            state=stats.state,
            connected=connected,
            connects=stats.connects,
            resumed_sessions=stats.resumed_sessions,
            published_batches=stats.published_batches,
            acked_batches=stats.acked_batches,
            acked_readings=stats.acked_readings,
            resent_batches=stats.resent_batches,
            unrouted_batches=stats.unrouted_batches,
            connect_failures=stats.connect_failures,
            losses=stats.losses,
            last_error=stats.last_error,
            last_errno=stats.last_errno,
        )


@dataclass(frozen=True, slots=True)
class InputSnapshot:
    """One input's link: state, latest error, counters (``edge status``, ``/metrics``)."""

    state: str
    last_error: str | None
    #: Link counters (firmware_bridge's, the local MQTT session's), cumulative.
    counters: Mapping[str, int]
    #: The discards among them (framing, CRC, COBS, readings before HELLO...).
    drops: Mapping[str, int]
    #: Device clock minus gateway clock at receipt (s), for device-stamped readings.
    clock_offset_s: float | None = None


@dataclass(frozen=True, slots=True)
class ClockSnapshot:
    """The last clock check the platform recorded (``sync-time-check``,
    :mod:`edge_agent._remote_ops`)."""

    #: Gateway clock minus the server's clock, s (within ± ``delay_s`` / 2).
    offset_s: float
    #: Round trip of the check through the broker, s.
    delay_s: float
    #: When the server measured it (its clock), ns since the epoch.
    checked_ts: int
    #: The server's "clock off" threshold and the verdict.
    threshold_s: float
    off: bool


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """The agent's state at one instant (:meth:`edge_agent.EdgeAgent.snapshot`)."""

    gateway: str
    #: Wall clock of the read, ns since the epoch.
    ts: int
    #: ``time.monotonic()`` of the read (for rates between snapshots).
    monotonic: float
    uptime_s: float
    config_version: int
    #: Input name -> link state (``starting``, ``up``, ``down``, ``retrying``...).
    inputs: Mapping[str, str]
    uplink: UplinkSnapshot
    spool: SpoolStats
    #: Stage -> channel -> samples dropped (non-zero only). Processor stages label channels
    #: ``device/measurement/field``; ``input_parse`` labels them ``<input>:<topic>``.
    dropped: Mapping[str, Mapping[str, int]]
    #: Readings the inputs handed to the agent.
    submitted: int
    checkpoints: CheckpointStats
    cpu_s: float
    rss_bytes: int
    #: Input -> reason -> messages it could not turn into readings (``input_parse``).
    input_rejects: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: Input -> times its task failed and was restarted (states ``failed``/``restarting``).
    input_failures: Mapping[str, int] = field(default_factory=dict)
    #: Input -> its link's details.
    input_links: Mapping[str, InputSnapshot] = field(default_factory=dict)
    #: Free bytes on the spool's filesystem (None: unknown).
    disk_free_bytes: int | None = None
    version: str = "unknown"
    #: The last clock check (None: never checked since start).
    clock: ClockSnapshot | None = None
    #: The last ``smartcity edge update`` (``<state_dir>/last-update.json``), if any.
    update: UpdateResult | None = None

    @property
    def links(self) -> dict[str, str]:
        """Every link's state: the inputs', then ``uplink``."""
        links = dict(self.inputs)
        links["uplink"] = self.uplink.state
        return links


class CpuMeter:
    """Percent of one CPU used between the snapshots it is shown (can exceed 100 with
    threads); the first one is measured from the meter's creation."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), process_cpu_s())

    def percent(self, snap: AgentSnapshot) -> float:
        now, cpu = snap.monotonic, snap.cpu_s
        (t0, c0), self._last = self._last, (now, cpu)
        return 0.0 if now <= t0 else round(100.0 * (cpu - c0) / (now - t0), 1)


def health_message(snap: AgentSnapshot, *, cpu_percent: float) -> Health:
    """The health message (``<root>/v1/<gw>/health``, and the ``health`` command's result)."""
    st = snap.spool
    return Health(
        gw=snap.gateway,
        ts=snap.ts,
        uptime_s=snap.uptime_s,
        next_seq=st.next_seq,
        spool=SpoolHealth(
            batches=st.batches,
            readings=st.readings,
            bytes=st.bytes,
            budget_bytes=st.budget_bytes,
            oldest_age_s=st.oldest_age_s,
            dropped_batches=st.dropped_batches,
            dropped_readings=st.dropped_readings,
        ),
        dropped=dropped_with_links(snap),
        links=snap.links,
        cpu_percent=cpu_percent,
        rss_bytes=snap.rss_bytes,
        update=None if snap.update is None else update_report(snap.update),
        version=snap.version,
        disk_free_bytes=snap.disk_free_bytes,
        clock_offset_s=None if snap.clock is None else snap.clock.offset_s,
        clock_delay_s=None if snap.clock is None else snap.clock.delay_s,
        clock_checked_ts=None if snap.clock is None else snap.clock.checked_ts,
    )


def update_report(u: UpdateResult) -> UpdateReport:
    """The last update as the health message carries it (reason cut to 500 characters)."""
    reason = None if u.reason is None else str(u.reason)[:500]
    return UpdateReport(
        version=str(u.version),
        status=str(u.status),
        ts=float(u.ts),
        previous_version=u.previous_version,
        reason=reason,
    )


#: Health ``dropped`` stage of what the inputs' links discarded (CRC, COBS, bad sentences...),
#: channel ``<input>:<counter>``.
INPUT_LINK: Final = "input_link"


def dropped_with_links(snap: AgentSnapshot) -> dict[str, dict[str, int]]:
    """``snap.dropped`` plus the inputs' link discards under :data:`INPUT_LINK`."""
    dropped = {stage: dict(per) for stage, per in snap.dropped.items()}
    link = {
        f"{name}:{counter}": n
        for name, inp in snap.input_links.items()
        for counter, n in inp.drops.items()
        if n
    }
    if link:
        dropped[INPUT_LINK] = link
    return dropped


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes for unprivileged users on the filesystem holding ``path`` (or its parent)."""
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None
