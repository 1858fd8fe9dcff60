"""Chaos run: a fleet publishing while every server-side component fails, then the ledger
is compared with InfluxDB.

It shows the platform's claim (nothing lost, nothing doubled) with everything failing at
once, on one machine, from real processes::

    mosquitto (persistence, queue budget)   ◀── GatewayFleet (one connection per gateway,
        │ $share/ingest/<root>/v1/+/telemetry       spool + seq replay, kept batches answer
        │                                           resend, ledger; --hostile N beside them)
        ▼                   ▲ resend (cmd)
    ingest-0, ingest-1 ──▶ influxd ◀── api (python -m smartcity api run: gap repair every
    (python -m ingest run, own process groups)      gap_repair_interval_s, live subscription)

    timeline:  start ─ reference (no faults) ─┬─ chaos (seeded schedule) ─ quiet ─┬─ stop fleet
                                              │                                   └─ drain, compare
    events:    worker_kill     SIGKILL ingest-N, restart with the same client id after a few s
               influxd_outage  SIGTERM influxd, start it again 10-30 s later (same data)
               broker_restart  SIGTERM mosquitto (it saves its persistence), start it again on
                               the same port and data directory: sessions must survive
               broker_kill     SIGKILL mosquitto, either just after it saved its persistence
                               (SIGUSR1, then the kill) or with whatever it saved last
                               (autosave_interval 60 s); start it again on the same data. What
                               it held in memory only is gone: gap repair (the API asking the
                               gateways to resend) refills the holes; ``repair_s`` is the time
                               from the restart to the last hole refilled
               uplink_loss     a share of the gateways lose their connection (spool, replay)
               reboot          a share of the gateways reboot (produce nothing, keep the spool)
               agent_kill      SIGKILL one real edge agent (edge_agents, _chaos_edge.py), start
                               it again on the same state dir after a few s

The schedule (:func:`plan_chaos`) is drawn from the seed: at least one event of each kind,
then more at random gaps; events on different components overlap, two events never hit the
same component at once, and all end before the quiet tail, in which the time the system takes
to catch up after the last fault is measured. Workers and the API that exit on their own (for
example a worker restarted while influxd is still down gives up after 30 s) are restarted like
a supervisor would and counted (``service_crashes``); the schedule's own kills are not.

The simulated clock is set whole weeks back (same weekday and time of day as the scenario's
start), so that it stays behind the wall clock for the whole run (ingest refuses readings
from the future) and the API's completeness window (set to cover it) sees every batch.

At the end the fleet **pauses**: it stops producing but stays connected, so its spools drain
and it still answers ``resend``; once InfluxDB holds everything acknowledged, it stops.

Hostile gateways (``hostile``, fault ``hostile`` of the simulators) publish beside the honest
ones; their messages are tallied apart (``hostile_cases``) and only the honest ledger is
compared with InfluxDB.

The verdict (:class:`ChaosReport`): readings the broker acknowledged to the fleet (the ledger)
against distinct points in InfluxDB (``lost``, ``extra``), and per gateway the bookkeeping
points of ingest (``ingest_batch``: one per batch, time derived from the batch, so a replay
overwrites it): a seq stored at two points is a duplicate, a seq the broker acknowledged and
InfluxDB lacks is a loss.

Everything runs in the caller's thread except the fleet (its own thread) and a monitor that
samples InfluxDB once a second; every child process is stopped in ``finally``.

This module runs the phases; the parts have one job each: ``_chaos_plan.py`` (the config,
the seeded schedule, the scaled scenario), ``_chaos_procs.py`` (the ingest and API child
processes, the broker kill), ``_chaos_report.py`` (the monitor and the verdict).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from simulators import SimulatorError
from smartcity._chaos_cluster import ClusterRun
from smartcity._chaos_edge import EdgeRun
from smartcity._chaos_plan import (
    CHAOS_KINDS,
    CLUSTER_KINDS,
    ChaosConfig,
    ChaosEvent,
    ChaosKind,
    plan_chaos,
    scaled_scenario,
)
from smartcity._chaos_report import (
    ChaosReport,
    check_stores,
    rate,
    repair_times,
)
from smartcity._chaos_run import _Run

__all__ = [
    "CHAOS_KINDS",
    "CLUSTER_KINDS",
    "ChaosConfig",
    "ChaosEvent",
    "ChaosKind",
    "ChaosReport",
    "plan_chaos",
    "run_chaos",
    "scaled_scenario",
]


def _progress_line(run: _Run, phase: str) -> str:
    fleet, mon = run.fleet, run.monitor
    assert fleet is not None
    assert mon is not None
    s = mon.last()
    stored = "?" if s is None or s.stored is None else str(s.stored)
    up = "".join("U" if w.running else "-" for w in run.workers)
    return (
        f"[chaos] {time.monotonic() - run.t0:7.1f}s {phase:9s} acked {fleet.ledger.readings} "
        f"stored {stored} online {fleet.stats.online}/{fleet.layout.gateways} "
        f"spooled {fleet.spooled_batches()} workers {up} {run.status()}"
    )


def _print(line: str) -> None:
    print(line, flush=True)


def run_chaos(
    config: ChaosConfig, *, say: Callable[[str], None] = _print, progress_every_s: float = 5.0
) -> ChaosReport:
    """Run the whole thing (see the module docstring) and return the verdict.

    Raises :class:`SimulatorError` when a service cannot start or the fleet fails;
    :class:`smartcity.ServiceError` escapes from the local services unchanged.
    """
    events = plan_chaos(config)
    with contextlib.ExitStack() as stack:
        if config.data_dir is None:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        else:
            data = Path(config.data_dir)
            data.mkdir(parents=True, exist_ok=True)
        if config.cluster:
            run: _Run = ClusterRun(config, data, say)
        elif config.edge_agents:
            run = EdgeRun(config, data, say)
        else:
            run = _Run(config, data, say)
        stack.callback(run.close)
        return _execute(run, events, progress_every_s)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _execute(run: _Run, events: list[ChaosEvent], progress_every_s: float) -> ChaosReport:
    cfg = run.config
    say = run.say
    say(
        f"[chaos] plan: {len(events)} events "
        + ", ".join(f"{k} {n}" for k, n in Counter(e.kind for e in events).items())
    )
    for e in events:
        say(f"[chaos]   +{e.at_s:6.1f}s {e.kind:15s} {e.down_s:5.1f}s {e.target}")
    run.start()
    assert run.fleet is not None
    assert run.monitor is not None
    assert run.fleet_thread is not None
    fleet, monitor = run.fleet, run.monitor
    report = ChaosReport(
        gateways=fleet.layout.gateways, seed=cfg.seed, speed=cfg.speed,
        reference_s=cfg.reference_s, chaos_s=cfg.duration_s,
    )  # fmt: skip

    def wait_until(deadline: float, phase: str) -> None:
        next_progress = time.monotonic() + progress_every_s
        while (now := time.monotonic()) < deadline:
            run.supervise()
            if now >= next_progress:
                next_progress = now + progress_every_s
                say(_progress_line(run, phase))
            time.sleep(min(0.1, max(0.0, deadline - now)))

    ref_start = time.monotonic()
    run.note("reference phase", seconds=cfg.reference_s)
    wait_until(ref_start + cfg.reference_s, "reference")
    chaos_start = time.monotonic()
    run.note("chaos phase", seconds=cfg.duration_s, events=len(events))
    # Every start and every end is an action on one timeline; both ends of an event run here.
    actions: list[tuple[float, int, bool, ChaosEvent]] = []
    for i, e in enumerate(events):
        actions += [(e.at_s, i, True, e), (e.end_s, i, False, e)]
    actions.sort(key=lambda a: (a[0], a[2]))
    for at, _i, starting, event in actions:
        wait_until(chaos_start + at, "chaos")
        now = time.monotonic() - chaos_start
        if starting:
            run.begin(event, now)
        else:
            run.end(event)
            event.ended_s = time.monotonic() - chaos_start
    last_fault_end = time.monotonic()
    acked_at_last_fault = fleet.ledger.readings
    run.note("last fault over", acked=acked_at_last_fault)
    wait_until(chaos_start + cfg.duration_s, "quiet")
    chaos_end = time.monotonic()

    # Drain: the fleet stops producing but stays connected (its spools drain, it answers the
    # API's resend requests) until InfluxDB holds everything the broker acknowledged.
    run.note("pausing the fleet (it drains its spools and still answers resend)")
    run.pause()
    paused_at = time.monotonic()
    drain_deadline = paused_at + cfg.drain_timeout_s
    next_progress = time.monotonic() + progress_every_s
    drained_at: float | None = None
    while time.monotonic() < drain_deadline:
        run.supervise()
        stored = monitor.stored()
        if (fleet.spooled_batches() == 0 and stored is not None
                and stored >= fleet.ledger.readings and run.drained()):  # fmt: skip
            drained_at = time.monotonic()
            break
        if time.monotonic() >= next_progress:
            next_progress = time.monotonic() + progress_every_s
            say(_progress_line(run, "drain"))
        time.sleep(0.25)
    run.note("stopping the fleet")
    fleet.stop()
    run.fleet_thread.join(cfg.drain_timeout_s + 60)
    if run.fleet_error is not None:
        raise SimulatorError(f"the fleet failed: {run.fleet_error}") from run.fleet_error
    sent = fleet.ledger.readings
    run.note("fleet stopped", acked=sent, spooled_batches=fleet.spooled_batches())
    monitor.stop()
    time.sleep(1.0)  # let a late rewrite land before counting
    run.note("drained" if drained_at else "drain timed out", stored=monitor.stored())

    totals = fleet.ledger.totals()
    report.created = totals["readings"]
    report.sent = sent
    report.unacked = totals["readings"] - totals["acked_readings"]
    report.acked_batches = totals["acked_batches"]
    report.replays = totals["replays"]
    report.no_subscribers = fleet.stats.no_subscribers
    check_stores(run.stores, cfg.database, fleet, report)
    report.drained = drained_at is not None
    report.final_drain_s = None if drained_at is None else drained_at - paused_at
    caught_up = monitor.first_stored_at_least(acked_at_last_fault, last_fault_end)
    if caught_up is None and drained_at is not None:
        caught_up = drained_at
    report.catch_up_after_last_fault_s = None if caught_up is None else caught_up - last_fault_end
    if len(run.stores) > 1:
        for i, replica in enumerate(report.replicas):
            when = monitor.first_stored_at_least(acked_at_last_fault, last_fault_end, replica=i)
            if when is None and drained_at is not None:  # no sample caught it: the drain did
                when = drained_at
            replica["catch_up_after_last_fault_s"] = (
                None if when is None else round(when - last_fault_end, 1)
            )
    report.events = dict(Counter(e.kind for e in events if e.ended_s is not None))
    report.unplanned_worker_restarts = run.unplanned
    report.api_restarts = run.api_restarts
    stats = fleet.stats
    report.resend_requests = stats.resend_requests
    report.resend_requeued = stats.resend_requeued
    report.resend_missing = stats.resend_missing
    report.hostile_gateways = cfg.hostile
    report.hostile_cases = fleet.hostile.cases()
    if run.kills:
        repair_times(
            run.stores[0], cfg.database, fleet, kills=run.kills, t0=run.t0, events=events,
            chaos_start=chaos_start, report=report,
        )  # fmt: skip
    samples = monitor.samples
    report.reference_acked_per_s = rate(samples, ref_start, chaos_start, "acked")
    report.chaos_acked_per_s = rate(samples, chaos_start, chaos_end, "acked")
    report.reference_stored_per_s = rate(samples, ref_start, chaos_start, "stored")
    report.chaos_stored_per_s = rate(samples, chaos_start, chaos_end, "stored")
    run.finish(report)
    report.timeline = run.timeline
    return report
