"""The edge agent: inputs → processors → batcher → spool → uplink, on one asyncio loop.

::

    ┌ agent[gw] TaskGroup ─────────────────────────────────────────────────────────────┐
    │ inputs[gw].supervisor ── inner TaskGroup: input[<name>].run, each supervised     │
    │ agent[gw].tick        ── every tick_s: pipeline.tick → batcher → spool → acks   │
    │ uplink[gw].run        ── MqttSession: spool replay, window, control messages    │
    │ agent[gw].health      ── Health on the health topic every interval_s            │
    │ agent[gw].prune       ── delivered batches past spool.keep_delivered_s, 60 s    │
    │ agent[gw].watchdog    ── WATCHDOG=1 to systemd every WatchdogSec/2 (_notify)     │
    └──────────────────────────────────────────────────────────────────────────────────┘
    local endpoint (_local): /metrics /healthz /status on 127.0.0.1:9108 and
    <state_dir>/agent.sock, served by this loop; READY=1 once the tasks run.

Start order: spool, processor state restored from the spool's checkpoint, uplink, tick,
inputs (sinks before sources). A tick that sealed batches, and otherwise a tick at most every
``spool.checkpoint_interval_s`` (1 s), commits in one spool transaction the sealed batches
and the processors' checkpoint (their state and the batcher's unsealed readings); inputs with
acknowledgements (local MQTT) are acked only after the commit that holds their samples. Stop order
(``stop()``, SIGTERM): a commit and its acks while the inputs are still connected, then the
inputs stop (what they deliver meanwhile is left unacked, the local broker redelivers it), a
last tick, a seal and a commit (open aggregation windows stay open, in the checkpoint: the
next start continues them), then the retained death message.

Each input runs supervised on its own (:mod:`edge_agent._supervisor`): a failed input is
counted, shown as ``failed``/``restarting`` and restarted with backoff; it never stops the
other inputs or the agent.

Remote config (``config/desired``, :mod:`edge_agent._remote`) is validated with the same
models as the file, may not touch credentials, TLS, broker hosts, serial URLs, register-map
files or the uplink/spool sections (the file stays authoritative), is persisted and applied by
swapping inputs and processors; processor chains whose rule did not change keep their state,
the others are flushed (open windows close early). The outcome goes to ``config/reported``.
Commands: :mod:`edge_agent._commands`. State for the health message and ``/metrics``: one
:meth:`EdgeAgent.snapshot` (:mod:`edge_agent._snapshot`). The views, the command handlers and
the remote config's validation are the agent's base class, :mod:`edge_agent._agent_control`;
this module is its lifecycle. ``edge run`` runs it in its own process image
(:mod:`edge_agent._daemon`); freed heap goes back to the kernel once it runs and with each
prune (:mod:`edge_agent._memory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from edge_agent._agent_control import AGENT_NAME, AgentControl, Runtime
from edge_agent._batcher import Batcher
from edge_agent._checkpoint import KEY_PENDING, STATE_KEYS, CheckpointError
from edge_agent._commands import MAX_RESEND_SEQS, Commands, parse_resend_args
from edge_agent._config import AgentConfig
from edge_agent._local import SOCKET_NAME, LocalEndpoint
from edge_agent._looplag import LoopLagHistogram
from edge_agent._memory import release_free_memory
from edge_agent._notify import DEBUG_STALL_ENV, Notifier, debug_stall, parse_stall
from edge_agent._pipeline import ChannelPipeline, RestoreReport
from edge_agent._remote import load_persisted
from edge_agent._remote_ops import RemoteOps, register_ops
from edge_agent._snapshot import (
    CheckpointStats,
    CpuMeter,
)
from edge_agent._spool import Spool
from edge_agent._supervisor import InputCounters, supervise
from edge_agent._uplink import Uplink
from foundation import LoopLagMonitor
from telemetry import (
    Reading,
    Topics,
    encode_message,
)

# parse_resend_args and MAX_RESEND_SEQS are re-exported: tests/api imports them from here.
__all__ = ["AGENT_NAME", "MAX_RESEND_SEQS", "EdgeAgent", "parse_resend_args", "run_agent"]

log: Final = logging.getLogger("edge_agent")
_PRUNE_INTERVAL_S: Final = 60.0


class EdgeAgent(AgentControl):
    """The gateway daemon. ``await agent.run()`` until :meth:`stop` (or cancellation).

    >>> agent = EdgeAgent(load_config("edge.yaml"))     # doctest: +SKIP
    >>> asyncio.run(agent.run())                         # doctest: +SKIP
    """

    def __init__(self, config: AgentConfig) -> None:
        self.gateway = config.gateway.id
        self.topics = Topics(config.broker.topic_root)
        self.file_config = config
        cfg, version = load_persisted(config)
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
        self._commands = Commands(self, self.uplink)
        #: logs, restart, sync-time-check, time-sync (edge_agent._remote_ops).
        self.ops = RemoteOps(self)
        register_ops(self.ops, self._commands)
        #: Set by the ``restart`` command: ``run_agent`` returns True, ``edge run`` restarts.
        self.restart_requested = False
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._swap = asyncio.Event()
        self._pending_swap: Runtime | None = None
        self._acks_waiting: list[Callable[[], None]] = []
        self._committed_at = 0.0  # time.monotonic() of the last spool commit
        #: While set, messages from inputs with acks are refused unacked (stop, swap).
        self._closing = False
        self.checkpoints = CheckpointStats()
        #: What the inputs count (``input_parse`` drops, reasons) and their failures.
        self.input_counters = InputCounters()
        self._cpu = CpuMeter()
        self.submitted = 0
        self.ready = asyncio.Event()
        self.notifier = Notifier()
        #: The local endpoint (/metrics, /healthz, /status) while running.
        self.endpoint: LocalEndpoint | None = None
        #: The event loop's lag while running (``edge_event_loop_lag_seconds``).
        self.loop_lag = LoopLagHistogram()
        self.version = _version()

    # -- public ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask for a clean stop (safe from a signal handler on the agent's loop)."""
        self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`stop`; flush everything into the spool before returning."""
        self.spool.open()
        logging.getLogger().addHandler(self.ops.ring)
        try:
            self._restore()
            m = self.file_config.metrics
            self.endpoint = LocalEndpoint(
                self.snapshot,
                tcp=None if m.port is None else (m.host, m.port),
                unix_path=self.file_config.gateway.state_dir / SOCKET_NAME,
                loop_lag=self.loop_lag,
            )
            lag = LoopLagMonitor(self.loop_lag.observe)
            async with (
                self.endpoint,
                contextlib.AsyncExitStack() as stack,
                asyncio.TaskGroup() as tg,
            ):
                lag.start()
                stack.push_async_callback(lag.aclose)
                gw = self.gateway
                up = tg.create_task(self.uplink.run(), name=f"uplink[{gw}].run")
                tick = tg.create_task(self._tick_loop(), name=f"agent[{gw}].tick")
                health = tg.create_task(self._health_loop(), name=f"agent[{gw}].health")
                prune = tg.create_task(self._prune_loop(), name=f"agent[{gw}].prune")
                inputs = tg.create_task(self._inputs_loop(), name=f"inputs[{gw}].supervisor")
                dog = tg.create_task(self.notifier.watchdog(), name=f"agent[{gw}].watchdog")
                jobs = tg.create_task(self._commands.run_jobs(), name=f"agent[{gw}].commands")
                stall = parse_stall(os.environ.get(DEBUG_STALL_ENV))
                debug = None
                if stall is not None:
                    debug = tg.create_task(debug_stall(*stall), name=f"agent[{gw}].debug_stall")
                self.ready.set()
                release_free_memory()
                self.notifier.notify(f"READY=1\nSTATUS=running, gateway {gw}")
                log.info(
                    "edge agent started",
                    extra={"gateway": gw, "config_version": self.config_version},
                )
                await self._stop.wait()
                self.notifier.notify("STOPPING=1")
                dog.cancel()
                jobs.cancel()
                if debug is not None:
                    debug.cancel()
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
            logging.getLogger().removeHandler(self.ops.ring)
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
        self.input_counters.count_drop(stage, channel, n)

    def count_reject(self, input_name: str, reason: str, where: str) -> None:
        self.input_counters.count_reject(input_name, reason, where)

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
        self.checkpoints = replace(
            ck,
            written=ck.written + 1,
            last_ms=(time.perf_counter() - t) * 1000,
            last_bytes=sum(len(b) for b in state.values()),
        )
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
        self.checkpoints = replace(self.checkpoints, ignored=self.checkpoints.ignored + 1)
        log.warning(
            f"saved {what} ignored, starting without it: {exc}",
            extra={"gateway": self.gateway, "reason": str(exc)},
        )

    def _log_restore(self, report: RestoreReport, when: str, pending: int = 0) -> None:
        ck = self.checkpoints
        self.checkpoints = replace(
            ck,
            restored_channels=ck.restored_channels + report.channels,
            restored_windows=ck.restored_windows + report.open_windows,
            closed_windows=ck.closed_windows + report.closed_windows,
        )
        report.log(log, gateway=self.gateway, when=when, pending=pending)

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
            release_free_memory()
            await asyncio.sleep(_PRUNE_INTERVAL_S)

    async def _inputs_loop(self) -> None:
        while True:
            rt = self._runtime
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(
                        supervise(inp, self, self.input_counters), name=f"input[{inp.name}].run"
                    )
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smartcity-telemetry")
    except PackageNotFoundError:
        return "unknown"


async def run_agent(config: AgentConfig, *, install_signals: bool = True) -> bool:
    """Run an agent until SIGTERM/SIGINT (or cancellation); the CLI's ``run`` uses this.
    Returns whether a ``restart`` command stopped it (the caller starts it again)."""
    import signal

    agent = EdgeAgent(config)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()
    return agent.restart_requested
