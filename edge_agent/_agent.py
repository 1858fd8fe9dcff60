"""The edge agent: inputs → processors → batcher → spool → uplink, on one asyncio loop.

::

    ┌ agent[gw] TaskGroup ─────────────────────────────────────────────────────────────┐
    │ inputs[gw].supervisor ── inner TaskGroup: input[<name>].run ...                 │
    │ agent[gw].tick        ── every tick_s: pipeline.tick → batcher → spool → acks   │
    │ uplink[gw].connection ── paho client per connection, spool replay, control msgs │
    │ agent[gw].health      ── Health on the health topic every interval_s            │
    └──────────────────────────────────────────────────────────────────────────────────┘

Start order: spool, uplink, tick, inputs (sinks before sources). Stop order (``stop()``,
SIGTERM): inputs first, then a forced tick (open aggregation windows close) and a seal so
every pending reading is in the spool, acks to the inputs, then the retained death message.

Remote config (``config/desired``) is validated with the same models as the file, must keep
the broker/spool/metrics sections, is persisted to ``<state_dir>/remote-config.json`` and
applied by swapping inputs and processors after a flush; the spool is never touched. The
outcome goes to ``config/reported``. Commands (``cmd``, MQTT v5 request/response): ``ping``,
``reannounce``, ``health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge_agent._config import AgentConfig, parse_config, remote_change_issues
from edge_agent._errors import CommandError, ConfigError, ConfigIssue, EdgeError
from edge_agent._inputs import Input, build_input
from edge_agent._pipeline import Batcher, ChannelPipeline
from edge_agent._spool import Spool
from edge_agent._uplink import ControlMessage, Uplink
from telemetry import (
    Birth,
    CommandRequest,
    CommandResponse,
    ConfigDesired,
    ConfigReported,
    Health,
    PayloadError,
    Reading,
    SpoolHealth,
    TopicError,
    TopicKind,
    Topics,
    decode_message,
    encode_message,
)

__all__ = ["AGENT_NAME", "EdgeAgent", "run_agent"]

log: Final = logging.getLogger("edge_agent")
AGENT_NAME: Final = "smartcity-edge/0.1"
_REMOTE_FILE: Final = "remote-config.json"
_ANSWERED_KEPT: Final = 256


class _ProcessProbe:
    """CPU use since the previous call and the current RSS of this process, from
    ``os.times()`` and ``/proc/self/statm`` (psutil would cost ~1.3 MB of RSS for two numbers).
    """

    _PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._cpu_s())

    @staticmethod
    def _cpu_s() -> float:
        t = os.times()
        return t.user + t.system

    def cpu_percent(self) -> float:
        """Percent of one CPU used since the previous call (can exceed 100 with threads)."""
        now, cpu = time.monotonic(), self._cpu_s()
        (t0, c0), self._last = self._last, (now, cpu)
        return 0.0 if now <= t0 else round(100.0 * (cpu - c0) / (now - t0), 1)

    def rss_bytes(self) -> int:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * self._PAGE
        except (OSError, ValueError, IndexError):
            import resource  # not Linux: the peak is the best the stdlib offers

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True, slots=True)
class _Runtime:
    """What a config swap replaces: the processors and the inputs."""

    config: AgentConfig
    version: int
    pipeline: ChannelPipeline
    inputs: list[Input]


class EdgeAgent:
    """The gateway daemon. ``await agent.run()`` until :meth:`stop` (or cancellation).

    >>> agent = EdgeAgent(load_config("edge.yaml"))     # doctest: +SKIP
    >>> asyncio.run(agent.run())                         # doctest: +SKIP
    """

    def __init__(self, config: AgentConfig) -> None:
        self.gateway = config.gateway.id
        self.topics = Topics(config.broker.topic_root)
        self.file_config = config
        cfg, version = self._load_remote(config)
        self._runtime = self._build(cfg, version)
        self.spool = Spool(
            config.spool_path,
            budget_bytes=int(config.spool.budget_bytes),
            synchronous=config.spool.synchronous,
        )
        self.batcher = Batcher(self.gateway, cfg.batch, self.spool)
        self.uplink = Uplink(
            gateway=self.gateway,
            client_id=config.client_id,
            broker=config.broker,
            topics=self.topics,
            spool=self.spool,
            birth=self._birth_payload,
            on_control=self._on_control,
        )
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._swap = asyncio.Event()
        self._pending_swap: _Runtime | None = None
        self._acks_waiting: list[Callable[[], None]] = []
        self._acks_sealed: list[Callable[[], None]] = []
        self._extra_drops: dict[str, dict[str, int]] = {}
        #: (response topic, correlation) of recently answered commands, oldest first.
        self._answered: dict[tuple[str, bytes], None] = {}
        self._proc = _ProcessProbe()
        self.submitted = 0
        self.ready = asyncio.Event()

    # -- public ----------------------------------------------------------------------------------
    @property
    def config(self) -> AgentConfig:
        return self._runtime.config

    @property
    def config_version(self) -> int:
        return self._runtime.version

    @property
    def pipeline(self) -> ChannelPipeline:
        return self._runtime.pipeline

    def stop(self) -> None:
        """Ask for a clean stop (safe from a signal handler on the agent's loop)."""
        self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; flush everything into the spool before returning."""
        self.spool.open()
        metrics = None
        try:
            if self.file_config.metrics.port is not None:
                from edge_agent._metrics import MetricsServer

                metrics = MetricsServer(self, self.file_config.metrics)
                metrics.start()
            async with asyncio.TaskGroup() as tg:
                gw = self.gateway
                up = tg.create_task(self.uplink.run(), name=f"uplink[{gw}].connection")
                tick = tg.create_task(self._tick_loop(), name=f"agent[{gw}].tick")
                health = tg.create_task(self._health_loop(), name=f"agent[{gw}].health")
                inputs = tg.create_task(self._inputs_loop(), name=f"inputs[{gw}].supervisor")
                self.ready.set()
                log.info(
                    "edge agent started",
                    extra={"gateway": gw, "config_version": self.config_version},
                )
                await self._stop.wait()
                # Sources first, then drain into the spool, then say goodbye.
                inputs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inputs
                tick.cancel()
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tick
                self._flush(force=True)
                await self.uplink.close()
                up.cancel()
        finally:
            if metrics is not None:
                metrics.stop()
            self.spool.close()
        log.info("edge agent stopped", extra={"gateway": self.gateway})

    # -- sink (inputs call these on the loop) ---------------------------------------------------
    def submit(self, readings: list[Reading], ack: Callable[[], None] | None) -> None:
        self.submitted += len(readings)
        self._runtime.pipeline.ingest(readings)
        if ack is not None:
            self._acks_waiting.append(ack)

    def count_drop(self, stage: str, channel: str, n: int = 1) -> None:
        per = self._extra_drops.setdefault(stage, {})
        per[channel] = per.get(channel, 0) + n

    # -- loops -----------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            self._flush(force=False)

    def _flush(self, *, force: bool) -> None:
        """Processors → batcher → spool; acks to inputs once what they gave is sealed."""
        acks, self._acks_waiting = self._acks_waiting, []
        self._acks_sealed.extend(acks)
        out = self._runtime.pipeline.tick(time.time_ns(), force=force)
        sealed = self.batcher.add(out) if out else 0
        if force or self.batcher.due(time.monotonic()):
            sealed += self.batcher.seal()
        if len(self.batcher) == 0:
            done, self._acks_sealed = self._acks_sealed, []
            for ack in done:
                ack()
        if sealed:
            self.uplink.notify()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.interval_s)
            self.uplink.publish_control(
                self.topics.health(self.gateway), encode_message(self.health()), qos=0
            )

    async def _inputs_loop(self) -> None:
        while True:
            rt = self._runtime
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(inp.run(self), name=f"input[{inp.name}].run")
                    for inp in rt.inputs
                ]
                await self._swap.wait()
                self._swap.clear()
                for t in tasks:
                    t.cancel()
            self._apply_swap()

    # -- health and birth ------------------------------------------------------------------------
    def health(self) -> Health:
        st = self.spool.stats()
        dropped = self._runtime.pipeline.dropped()
        for stage, per in self._extra_drops.items():
            dropped.setdefault(stage, {}).update(per)
        links = {inp.name: inp.state for inp in self._runtime.inputs}
        links["uplink"] = self.uplink.stats.state
        cpu = self._proc.cpu_percent()
        rss = self._proc.rss_bytes()
        return Health(
            gw=self.gateway,
            ts=time.time_ns(),
            uptime_s=round(time.monotonic() - self._started, 3),
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
            dropped=dropped,
            links=links,
            cpu_percent=cpu,
            rss_bytes=rss,
        )

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

    # -- control plane ---------------------------------------------------------------------------
    def _on_control(self, msg: ControlMessage) -> None:
        try:
            _, kind = self.topics.parse(msg.topic)
        except TopicError:
            return
        if kind is TopicKind.CONFIG_DESIRED:
            self._on_config(msg.payload)
        elif kind is TopicKind.COMMAND:
            self._on_command(msg)

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
        self._persist(desired)
        self._pending_swap = runtime
        self._swap.set()

    def _prepare(self, data: dict[str, Any], version: int) -> _Runtime:
        source = f"remote config version {version}"
        cfg = parse_config(data, source=source)
        issues = remote_change_issues(self.file_config, cfg)
        if issues:
            raise ConfigError(source, issues)
        try:
            return self._build(cfg, version)
        except (EdgeError, ValueError) as exc:
            raise ConfigError(source, [ConfigIssue("", str(exc))]) from exc

    def _build(self, cfg: AgentConfig, version: int) -> _Runtime:
        return _Runtime(
            config=cfg,
            version=version,
            pipeline=ChannelPipeline(list(cfg.processors)),
            inputs=[build_input(i, gateway=cfg.gateway.id) for i in cfg.inputs],
        )

    def _apply_swap(self) -> None:
        new, self._pending_swap = self._pending_swap, None
        if new is None:
            return
        self._flush(force=True)  # the old processors' output goes to the spool first
        self._runtime = new
        self.batcher.cfg = new.config.batch
        log.info("remote config applied", extra={"version": new.version})
        self._report(new.version, "applied")
        self.reannounce()

    def _remote_path(self) -> Path:
        return self.file_config.gateway.state_dir / _REMOTE_FILE

    def _persist(self, desired: ConfigDesired) -> None:
        path = self._remote_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"version": desired.version, "config": desired.config}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _load_remote(self, file_cfg: AgentConfig) -> tuple[AgentConfig, int]:
        path = file_cfg.gateway.state_dir / _REMOTE_FILE
        if not path.exists():
            return file_cfg, 0
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            version = int(stored["version"])
            cfg = parse_config(stored["config"], source=str(path))
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
            log.warning("persisted remote config ignored", extra={"reason": str(exc)})
            return file_cfg, 0
        if remote_change_issues(file_cfg, cfg):
            log.warning("persisted remote config ignored: it changes fixed sections")
            return file_cfg, 0
        return cfg, version

    def _on_command(self, msg: ControlMessage) -> None:
        if msg.response_topic is None:
            log.warning("command without a response topic ignored")
            return
        # The persistent session may redeliver a command whose PUBACK was lost with the
        # connection (DUP set): answer each request once.
        if msg.correlation is not None:
            key = (msg.response_topic, msg.correlation)
            if msg.redelivered and key in self._answered:
                log.info("redelivered command already answered", extra={"topic": msg.topic})
                return
            self._answered[key] = None
            if len(self._answered) > _ANSWERED_KEPT:
                del self._answered[next(iter(self._answered))]
        try:
            req = decode_message(msg.payload, CommandRequest)
            result = self._command(req)
            resp = CommandResponse(ok=True, result=result)
        except (PayloadError, CommandError) as exc:
            resp = CommandResponse(ok=False, error=str(exc))
        self.uplink.publish_control(
            msg.response_topic, encode_message(resp), correlation=msg.correlation
        )

    def _command(self, req: CommandRequest) -> dict[str, Any]:
        if req.cmd == "ping":
            return {
                "pong": True,
                "ts": time.time_ns(),
                "uptime_s": round(time.monotonic() - self._started, 3),
                "config_version": self.config_version,
            }
        if req.cmd == "reannounce":
            return {"published": self.reannounce()}
        if req.cmd == "health":
            import msgspec

            result: dict[str, Any] = msgspec.to_builtins(self.health())
            return result
        raise CommandError(f"unknown command {req.cmd!r} (known: ping, reannounce, health)")


async def run_agent(config: AgentConfig, *, install_signals: bool = True) -> None:
    """Run an agent until SIGTERM/SIGINT (or cancellation); the CLI's ``run`` uses this."""
    import signal

    agent = EdgeAgent(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()
