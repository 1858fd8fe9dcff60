"""The edge agent: inputs → processors → batcher → spool → uplink, on one asyncio loop.

::

    ┌ agent[gw] TaskGroup ─────────────────────────────────────────────────────────────┐
    │ inputs[gw].supervisor ── inner TaskGroup: input[<name>].run ...                 │
    │ agent[gw].tick        ── every tick_s: pipeline.tick → batcher → spool → acks   │
    │ uplink[gw].connection ── paho client per connection, spool replay, control msgs │
    │ agent[gw].health      ── Health on the health topic every interval_s            │
    │ agent[gw].prune       ── delivered batches past spool.keep_delivered_s, 60 s    │
    └──────────────────────────────────────────────────────────────────────────────────┘

Start order: spool, processor state restored from the spool's checkpoint, uplink, tick,
inputs (sinks before sources). A tick that sealed batches, and otherwise a tick at most every
``spool.checkpoint_interval_s`` (1 s), commits in one spool transaction the sealed batches
and the processors' checkpoint (their state and the batcher's unsealed readings); inputs with
acknowledgements (local MQTT) are acked only after the commit that holds their samples. Stop order
(``stop()``, SIGTERM): a commit and its acks while the inputs are still connected, then the
inputs stop (what they deliver meanwhile is left unacked, the local broker redelivers it), a
last tick, a seal and a commit (open aggregation windows stay open, in the checkpoint: the
next start continues them), then the retained death message.

Remote config (``config/desired``) is validated with the same models as the file, must keep
the broker/spool/metrics sections, is persisted to ``<state_dir>/remote-config.json`` and
applied by swapping inputs and processors; processor chains whose rule did not change keep
their state, the others are flushed (open windows close early). The
outcome goes to ``config/reported``. Commands (``cmd``, MQTT v5 request/response): ``ping``,
``reannounce``, ``health``, ``resend`` (publish held batches again by seq: the platform's gap
repair; at most ``MAX_RESEND_SEQS`` seqs per request).
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
from edge_agent._errors import CommandError, ConfigError, ConfigIssue, EdgeError, SpoolError
from edge_agent._inputs import Input, build_input
from edge_agent._pipeline import (
    KEY_PENDING,
    STATE_KEYS,
    Batcher,
    ChannelPipeline,
    CheckpointError,
    RestoreReport,
)
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

__all__ = ["AGENT_NAME", "MAX_RESEND_SEQS", "EdgeAgent", "parse_resend_args", "run_agent"]

log: Final = logging.getLogger("edge_agent")
AGENT_NAME: Final = "smartcity-edge/0.1"
_REMOTE_FILE: Final = "remote-config.json"
_ANSWERED_KEPT: Final = 256
#: Most seqs one ``resend`` request may name (seqs and ranges together).
MAX_RESEND_SEQS: Final = 10_000
_PRUNE_INTERVAL_S: Final = 60.0


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


@dataclass(slots=True)
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
            keep_delivered_s=config.spool.keep_delivered_s,
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
        self._committed_at = 0.0  # time.monotonic() of the last spool commit
        #: While set, messages from inputs with acks are refused unacked (stop, swap).
        self._closing = False
        self.checkpoints = CheckpointStats()
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
            self._restore()
            if self.file_config.metrics.port is not None:
                from edge_agent._metrics import MetricsServer

                metrics = MetricsServer(self, self.file_config.metrics)
                metrics.start()
            async with asyncio.TaskGroup() as tg:
                gw = self.gateway
                up = tg.create_task(self.uplink.run(), name=f"uplink[{gw}].connection")
                tick = tg.create_task(self._tick_loop(), name=f"agent[{gw}].tick")
                health = tg.create_task(self._health_loop(), name=f"agent[{gw}].health")
                prune = tg.create_task(self._prune_loop(), name=f"agent[{gw}].prune")
                inputs = tg.create_task(self._inputs_loop(), name=f"inputs[{gw}].supervisor")
                self.ready.set()
                log.info(
                    "edge agent started",
                    extra={"gateway": gw, "config_version": self.config_version},
                )
                await self._stop.wait()
                # Commit and ack while the inputs are connected; then stop the sources
                # (refusing what they still deliver, unacked), drain into the spool with the
                # processors' state, and say goodbye. Open windows stay open, checkpointed.
                self._flush(commit=True)
                self._closing = True
                inputs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inputs
                tick.cancel()
                health.cancel()
                prune.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tick
                self._flush(seal=True)
                await self.uplink.close()
                up.cancel()
        finally:
            if metrics is not None:
                metrics.stop()
            self.spool.close()
        log.info("edge agent stopped", extra={"gateway": self.gateway})

    # -- sink (inputs call these on the loop) ---------------------------------------------------
    def submit(self, readings: list[Reading], ack: Callable[[], None] | None) -> None:
        if self._closing and ack is not None:
            return  # left unacked: the input's broker delivers it again after the stop/swap
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
            self._flush()

    def _flush(self, *, force: bool = False, seal: bool = False, commit: bool = False) -> None:
        """Processors → batcher; commit sealed batches with the checkpoint; then ack.

        ``force`` closes open aggregation windows (config change only); ``seal`` seals
        every pending reading (stop); ``commit`` commits now whatever the checkpoint
        interval (before inputs disconnect, so their acks go out).
        """
        acks, self._acks_waiting = self._acks_waiting, []
        pipeline = self._runtime.pipeline
        out = pipeline.tick(time.time_ns(), force=force)
        if out:
            self.batcher.add(out)
        now = time.monotonic()
        if seal or force or self.batcher.due(now):
            self.batcher.seal()
        sealed = 0
        changed = pipeline.dirty or self.batcher.uncommitted
        due = now - self._committed_at >= self.config.spool.checkpoint_interval_s
        if changed and (commit or seal or force or due or self.batcher.sealed_waiting):
            sealed = self._commit(pipeline)
            self._committed_at = now
            changed = False
        if changed:  # their samples are not committed yet: ack with the next commit
            self._acks_waiting[:0] = acks
        else:
            for ack in acks:
                ack()
        if sealed:
            self.uplink.notify()

    def _commit(self, pipeline: ChannelPipeline) -> int:
        """One spool transaction: sealed batches + processor state + pending readings."""
        t = time.perf_counter()
        state = pipeline.checkpoint()
        sealed = self.batcher.commit(state)
        ck = self.checkpoints
        ck.written += 1
        ck.last_ms = (time.perf_counter() - t) * 1000
        ck.last_bytes = sum(len(b) for b in state.values())
        return sealed

    def _restore(self) -> None:
        """Put the processors' checkpoint and the unsealed readings back (start-up)."""
        blobs = self.spool.load_state()
        if not blobs:
            return
        pipeline = self._runtime.pipeline
        report: RestoreReport | None = None
        if any(k in blobs for k in STATE_KEYS if k != KEY_PENDING):
            try:
                report = pipeline.restore(blobs, time.time_ns())
            except CheckpointError as exc:
                self._ignored("processor checkpoint", exc)
        pending = 0
        if KEY_PENDING in blobs:
            try:
                pending = self.batcher.restore(blobs[KEY_PENDING])
            except CheckpointError as exc:
                self._ignored("unsealed readings", exc)
        if report is not None:
            self._log_restore(report, "restart", pending)
            if report.readings:
                self.batcher.add(report.readings)
        self._commit(pipeline)
        self.uplink.notify()

    def _ignored(self, what: str, exc: CheckpointError) -> None:
        self.checkpoints.ignored += 1
        log.warning(
            f"saved {what} ignored, starting without it: {exc}",
            extra={"gateway": self.gateway, "reason": str(exc)},
        )

    def _log_restore(self, report: RestoreReport, when: str, pending: int = 0) -> None:
        ck = self.checkpoints
        ck.restored_channels += report.channels
        ck.restored_windows += report.open_windows
        ck.closed_windows += report.closed_windows
        log.info(
            f"processor state restored ({when}): {report.channels} channels, "
            f"{report.open_windows} open windows continue, {pending} unsealed readings",
            extra={
                "gateway": self.gateway,
                "chains": report.restored_chains,
                "channels": report.channels,
                "open_windows": report.open_windows,
                "pending_readings": pending,
            },
        )
        if report.flushed_chains:
            log.warning(
                f"processor config changed ({when}): state of rule(s) {report.flushed_chains} "
                f"flushed, {report.closed_windows} open windows closed early with their "
                "window-start timestamps, filters of those rules restart empty",
                extra={
                    "gateway": self.gateway,
                    "flushed_chains": report.flushed_chains,
                    "closed_windows": report.closed_windows,
                },
            )

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.interval_s)
            self.uplink.publish_control(
                self.topics.health(self.gateway), encode_message(self.health()), qos=0
            )

    async def _prune_loop(self) -> None:
        while True:
            pruned = self.spool.prune()
            if pruned:
                log.debug("delivered batches pruned", extra={"batches": pruned})
            await asyncio.sleep(_PRUNE_INTERVAL_S)

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
                # Commit and ack while connected; the rest is redelivered to the new inputs.
                self._flush(commit=True)
                self._closing = True
                for t in tasks:
                    t.cancel()
            try:
                self._apply_swap()
            finally:
                self._closing = False

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
        old = self._runtime.pipeline
        # what the old inputs gave goes through the old processors first
        self._flush(commit=True)
        try:
            report = new.pipeline.restore(old.checkpoint(full=True), time.time_ns())
        except CheckpointError as exc:  # cannot happen with blobs made just now; be safe
            self._ignored("processor state (config swap)", exc)
            self._flush(force=True)
        else:
            self._log_restore(report, f"config version {new.version}")
            if report.readings:
                self.batcher.add(report.readings)
        self._runtime = new
        self.batcher.cfg = new.config.batch
        self._flush(seal=True)
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
        if req.cmd == "resend":
            return self.resend(parse_resend_args(req.args))
        raise CommandError(
            f"unknown command {req.cmd!r} (known: ping, reannounce, health, resend)"
        )

    def resend(self, seqs: list[int]) -> dict[str, Any]:
        """Publish again the held batches with these seqs (the ``resend`` command)."""
        try:
            found = self.spool.redeliver(seqs)
        except SpoolError as exc:
            raise CommandError(f"cannot read the spool: {exc}") from exc
        self.uplink.resend(found.requeued)
        log.info(
            "resend requested",
            extra={
                "requested": len(seqs),
                "requeued": len(found.requeued),
                "waiting": found.waiting,
                "missing": len(found.missing),
            },
        )
        return {
            "found": found.found,
            "missing": found.missing,
            "requeued": len(found.requeued),
            "waiting": found.waiting,
        }


def parse_resend_args(args: dict[str, Any]) -> list[int]:
    """The distinct seqs of a ``resend`` request: ``{"seqs": [3, 7], "ranges": [[10, 20]]}``
    (ranges inclusive, either key optional, at most :data:`MAX_RESEND_SEQS` in all)."""
    unknown = set(args) - {"seqs", "ranges"}
    if unknown:
        raise CommandError(f"resend: unknown argument(s) {sorted(unknown)} (known: seqs, ranges)")
    seqs_arg = args.get("seqs", [])
    ranges_arg = args.get("ranges", [])
    if not isinstance(seqs_arg, list) or not isinstance(ranges_arg, list):
        raise CommandError("resend: seqs and ranges must be lists")
    if not seqs_arg and not ranges_arg:
        raise CommandError("resend: give seqs and/or ranges")

    def seq(v: object, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CommandError(f"resend: {where} must be a non-negative integer, not {v!r}")
        return v

    out: set[int] = {seq(v, f"seqs[{i}]") for i, v in enumerate(seqs_arg)}
    if len(out) > MAX_RESEND_SEQS:
        raise CommandError(f"resend: more than {MAX_RESEND_SEQS} seqs in one request")
    for i, r in enumerate(ranges_arg):
        if not isinstance(r, list) or len(r) != 2:
            raise CommandError(f"resend: ranges[{i}] must be [from, to]")
        lo, hi = seq(r[0], f"ranges[{i}][0]"), seq(r[1], f"ranges[{i}][1]")
        if lo > hi:
            raise CommandError(f"resend: ranges[{i}] goes backwards ({lo} > {hi})")
        if hi - lo + 1 + len(out) > MAX_RESEND_SEQS:
            raise CommandError(f"resend: more than {MAX_RESEND_SEQS} seqs in one request")
        out.update(range(lo, hi + 1))
    return sorted(out)


async def run_agent(config: AgentConfig, *, install_signals: bool = True) -> None:
    """Run an agent until SIGTERM/SIGINT (or cancellation); the CLI's ``run`` uses this."""
    import signal

    agent = EdgeAgent(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()
