"""What the agent shows and answers: its state views, its commands, its remote config.

:class:`AgentControl` is the part of :class:`edge_agent.EdgeAgent` that the world outside the
pipeline talks to; the agent's lifecycle (start and stop order, ticks, commits, the swap
itself) is in :mod:`edge_agent._agent`.

- views: :meth:`~AgentControl.snapshot` (the one state health and ``/metrics`` read,
  :mod:`edge_agent._snapshot`), the health message, the birth message;
- commands (:mod:`edge_agent._commands` calls these): ``ping``, ``resend``, ``update``,
  ``restart``, the firmware links for ``time-sync``;
- control plane: ``config/desired`` validated and built into a new :class:`Runtime`
  (processors and inputs), persisted, reported on ``config/reported``, then swapped in by the
  agent's inputs loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from edge_agent._commands import Commands, resend
from edge_agent._config import AgentConfig
from edge_agent._errors import ConfigError, ConfigIssue, EdgeError
from edge_agent._pipeline import ChannelPipeline
from edge_agent._remote import persist, validate_remote
from edge_agent._remote_ops import RemoteOps
from edge_agent._snapshot import (
    AgentSnapshot,
    CheckpointStats,
    CpuMeter,
    InputSnapshot,
    UplinkSnapshot,
    disk_free_bytes,
    health_message,
    process_cpu_s,
    process_rss_bytes,
)
from edge_agent._spool import Spool
from edge_agent._supervisor import InputCounters
from edge_agent._update import order_update, read_result
from edge_agent._uplink import ControlMessage, Uplink
from edge_agent.inputs import Input, build_input
from telemetry import (
    Birth,
    ConfigDesired,
    ConfigReported,
    Health,
    PayloadError,
    TopicError,
    TopicKind,
    Topics,
    decode_message,
    encode_message,
)

__all__ = ["AGENT_NAME", "AgentControl", "Runtime"]

log: Final = logging.getLogger("edge_agent")
AGENT_NAME: Final = "smartcity-edge/0.1"


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a config swap replaces: the processors and the inputs."""

    config: AgentConfig
    version: int
    pipeline: ChannelPipeline
    inputs: list[Input]


class AgentControl:
    """Views, commands and remote config of :class:`edge_agent.EdgeAgent` (its base class)."""

    # Set by EdgeAgent.__init__.
    gateway: str
    topics: Topics
    file_config: AgentConfig
    spool: Spool
    uplink: Uplink
    ops: RemoteOps
    checkpoints: CheckpointStats
    input_counters: InputCounters
    submitted: int
    version: str
    restart_requested: bool
    _runtime: Runtime
    _pending_swap: Runtime | None
    _swap: asyncio.Event
    _commands: Commands
    _cpu: CpuMeter
    _started: float

    if TYPE_CHECKING:

        def stop(self) -> None: ...

    @property
    def config(self) -> AgentConfig:
        return self._runtime.config

    @property
    def config_version(self) -> int:
        return self._runtime.version

    @property
    def pipeline(self) -> ChannelPipeline:
        return self._runtime.pipeline

    # -- state: one snapshot for every view ------------------------------------------------------
    def snapshot(self) -> AgentSnapshot:
        """The agent's state now (health message, ``/metrics``; safe from the scrape thread)."""
        rt = self._runtime
        dropped = rt.pipeline.dropped()
        counters = self.input_counters
        for stage, per in list(counters.drops.items()):
            dropped.setdefault(stage, {}).update(per)  # dict copies are atomic under the GIL
        return AgentSnapshot(
            gateway=self.gateway,
            ts=time.time_ns(),
            monotonic=(now := time.monotonic()),
            uptime_s=round(now - self._started, 3),
            config_version=rt.version,
            inputs={inp.name: inp.state for inp in rt.inputs},
            uplink=UplinkSnapshot.of(self.uplink.stats, connected=self.uplink.connected),
            spool=self.spool.stats(),
            dropped=dropped,
            input_rejects={name: dict(per) for name, per in list(counters.rejects.items())},
            input_failures=dict(counters.failures),
            input_links={
                inp.name: InputSnapshot(
                    state=inp.state,
                    last_error=inp.error(),
                    counters=inp.counters(),
                    drops=inp.drop_counters(),
                    clock_offset_s=inp.clock_offset_s,
                )
                for inp in rt.inputs
            },
            disk_free_bytes=disk_free_bytes(self.file_config.spool_path.parent),
            version=self.version,
            clock=self.ops.clock,
            update=read_result(self.file_config.gateway.state_dir),
            submitted=self.submitted,
            checkpoints=self.checkpoints,
            cpu_s=process_cpu_s(),
            rss_bytes=process_rss_bytes(),
        )

    def health(self) -> Health:
        """The health message: the :meth:`snapshot`, with CPU use since the previous one."""
        snap = self.snapshot()
        return health_message(snap, cpu_percent=self._cpu.percent(snap))

    def birth(self) -> Birth:
        cfg = self.config
        return Birth(
            gw=self.gateway,
            ts=time.time_ns(),
            agent=AGENT_NAME,
            config_version=self.config_version,
            location=None if cfg.gateway.location is None else cfg.gateway.location.to_wire(),
            devices=[d.to_wire() for d in cfg.devices],
        )

    def _birth_payload(self) -> bytes:
        return encode_message(self.birth())

    def reannounce(self) -> bool:
        return self.uplink.publish_control(
            self.topics.status(self.gateway), self._birth_payload(), qos=1, retain=True
        )

    # -- commands (edge_agent._commands calls these) ---------------------------------------------
    def ping(self) -> dict[str, Any]:
        return {
            "pong": True,
            "ts": time.time_ns(),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "config_version": self.config_version,
        }

    def resend(self, seqs: list[int]) -> dict[str, Any]:
        """Publish again the held batches with these seqs (the ``resend`` command)."""
        return resend(self.spool, self.uplink, seqs)

    def update(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ``update`` command: leave a request for the root-side updater (_update)."""
        return order_update(self.file_config.gateway.state_dir, args)

    def request_restart(self) -> None:
        """Stop cleanly, then ``edge run`` starts again (the ``restart`` command)."""
        self.restart_requested = True
        self.stop()

    def firmware_links(self) -> list[tuple[str, Any]]:
        """(input name, open FirmwareLink) of every ``firmware`` input (``time-sync``)."""
        return [
            (inp.name, link)
            for inp in self._runtime.inputs
            if (link := getattr(inp, "firmware_link", None)) is not None
        ]

    # -- control plane ---------------------------------------------------------------------------
    def _on_control(self, msg: ControlMessage) -> None:
        try:
            _, kind = self.topics.parse(msg.topic)
        except TopicError:
            return
        if kind is TopicKind.CONFIG_DESIRED:
            self._on_config(msg.payload)
        elif kind is TopicKind.COMMAND:
            self._commands.handle(msg)

    def _report(self, version: int, status: str, reason: str | None = None) -> None:
        report = ConfigReported(
            gw=self.gateway,
            ts=time.time_ns(),
            version=version,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            running_version=self.config_version,
        )
        self.uplink.publish_control(
            self.topics.config_reported(self.gateway), encode_message(report), retain=True
        )

    def _on_config(self, payload: bytes) -> None:
        if not payload:
            return  # retained message cleared
        try:
            desired = decode_message(payload, ConfigDesired)
        except PayloadError as exc:
            log.warning("remote config refused", extra={"reason": str(exc)})
            self._report(0, "rejected", f"not a config message: {exc}")
            return
        pending = self._pending_swap
        if desired.version == self.config_version or (
            pending is not None and pending.version == desired.version
        ):
            return  # the retained message again after a reconnect
        try:
            runtime = self._prepare(desired.config, desired.version)
        except ConfigError as exc:
            log.warning(
                "remote config rejected", extra={"version": desired.version, "reason": exc.reason}
            )
            self._report(desired.version, "rejected", exc.reason)
            return
        persist(self.file_config, desired)
        self._pending_swap = runtime
        self._swap.set()

    def _prepare(self, data: dict[str, Any], version: int) -> Runtime:
        cfg = validate_remote(self.file_config, data, version)
        try:
            return self._build(cfg, version)
        except (EdgeError, ValueError) as exc:
            source = f"remote config version {version}"
            raise ConfigError(source, [ConfigIssue("", str(exc))]) from exc

    def _build(self, cfg: AgentConfig, version: int) -> Runtime:
        return Runtime(
            config=cfg,
            version=version,
            pipeline=ChannelPipeline(
                list(cfg.processors), max_channels=cfg.processors_max_channels
            ),
            inputs=[build_input(i, gateway=cfg.gateway.id) for i in cfg.inputs],
        )
