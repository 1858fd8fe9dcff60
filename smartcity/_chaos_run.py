"""One chaos run's services, fleet and timeline (the single-node profile): what
:func:`smartcity._chaos.run_chaos` drives through its events. The cluster profile
(:mod:`smartcity._chaos_cluster`) and the real edge agents (:mod:`smartcity._chaos_edge`)
build on it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from simulators import FaultSpec, FleetConfig, GatewayFleet, Scenario, SimulatorError
from smartcity._chaos_plan import (
    ChaosConfig,
    ChaosEvent,
    scaled_scenario,
    sim_start_ns,
)
from smartcity._chaos_procs import ApiProcess, WorkerProcess, kill_broker, worker_config
from smartcity._chaos_report import (
    ChaosReport,
    Monitor,
)
from smartcity._localstack import Influxd, Mosquitto

__all__ = ["_Run"]


class _Run:
    """The services, the fleet and the timeline of one chaos run (the single-node profile;
    ``smartcity._chaos_cluster.ClusterRun`` is the cluster profile's)."""

    def __init__(self, config: ChaosConfig, data_dir: Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.data = data_dir
        self.say = say
        self.workers: list[WorkerProcess] = []
        self.api: ApiProcess | None = None
        self.api_restarts = 0
        #: Per broker_kill: when mosquitto was started again (monotonic, wall) and the mode.
        self.kills: list[dict[str, Any]] = []
        self.fleet: GatewayFleet | None = None
        self.fleet_thread: threading.Thread | None = None
        self.fleet_error: BaseException | None = None
        self.monitor: Monitor | None = None
        self.t0 = time.monotonic()
        self.unplanned = 0
        self.timeline: list[dict[str, Any]] = []
        #: The InfluxDB databases the ledger is checked against (every replica).
        self.stores: list[Influxd] = []
        self._setup()

    def _setup(self) -> None:
        config, data_dir = self.config, self.data
        self.broker = Mosquitto(
            data_dir=data_dir / "mosquitto",
            max_queued_messages=config.max_queued_messages,
            max_queued_bytes=config.max_queued_bytes,
        )
        self.influxd = Influxd(data_dir=data_dir / "influxd")
        self.stores = [self.influxd]

    def status(self) -> str:
        """The servers' state for the progress line."""
        return (
            f"influxd {'up' if self.influxd.running else 'DOWN'} "
            f"broker {'up' if self.broker.running else 'DOWN'}"
        )

    def note(self, what: str, **details: Any) -> None:
        t = time.monotonic() - self.t0
        self.timeline.append({"t": round(t, 2), "what": what, **details})
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        self.say(f"[chaos] {t:7.1f}s {what} {extra}".rstrip())

    # -- start and stop --------------------------------------------------------------------
    def start(self) -> None:
        """The services, then (with ``config.api``) the API, then the fleet."""
        self.start_services()
        scenario = scaled_scenario(self.config)
        now = time.time_ns()
        start_ns = sim_start_ns(scenario, self.config, now)
        self.start_api(now, start_ns)
        self.start_fleet(self.fleet_config(scenario, start_ns))

    def start_services(self) -> None:
        """Broker, InfluxDB and the ingest workers, connected (sinks before sources)."""
        cfg = self.config
        self.note("starting mosquitto", url=self.broker.url)
        self.broker.start()
        self.note("starting influxd", url=self.influxd.url)
        self.influxd.start()
        self.influxd.create_database(cfg.database)
        for n in range(cfg.workers):
            cid = f"ingest-{n}"
            path = self.data / f"{cid}.yaml"
            path.write_text(json.dumps(worker_config(cfg, cid, self.broker, self.influxd)))
            worker = WorkerProcess(cid, path, self.data / f"{cid}.log")
            self.workers.append(worker)
            worker.start()
        # Sinks first: on a first start the workers have no session yet, and a message
        # published before they subscribed would go to nobody.
        self.wait_workers()

    def start_api(self, now: int, start_ns: int) -> None:
        """The API process for gap repair (with ``config.api``), ready."""
        cfg = self.config
        if cfg.api:
            # From the simulated start to the end of the run, with an hour to spare.
            window = (now - start_ns) // 10**9 + round(
                cfg.reference_s + cfg.duration_s + cfg.drain_timeout_s + 3600
            )
            self.api = ApiProcess(cfg, self.broker, self.influxd, self.data, int(window))
            self.api.start()
            deadline = time.monotonic() + 60
            while not self.api.ready():
                if not self.api.running:
                    raise SimulatorError(f"the API exited at start; see {self.api.log_path}")
                if time.monotonic() > deadline:
                    raise SimulatorError("the API was not ready within 60 s")
                time.sleep(0.2)
            self.note("api ready", gap_repair_interval_s=cfg.gap_repair_interval_s)

    def fleet_config(self, scenario: Scenario, start_ns: int) -> FleetConfig:
        """Where and how the fleet publishes (the benchmark changes its speed)."""
        return FleetConfig(
            scenario=scenario, host=self.broker.host, port=self.broker.port,
            client_prefix="chaos", drain_timeout_s=min(self.config.drain_timeout_s, 120.0),
            retry_unrouted=True, start_ns=start_ns,
        )  # fmt: skip

    def wait_workers(self) -> None:
        """Until every ingest worker is connected (60 s at most)."""
        deadline = time.monotonic() + 60
        while not all(w.connected() for w in self.workers):
            for w in self.workers:
                if not w.running:
                    raise SimulatorError(f"{w.client_id} exited at start; see {w.log_path}")
            if time.monotonic() > deadline:
                raise SimulatorError("ingest workers did not connect within 60 s")
            time.sleep(0.2)
        self.note("workers connected", workers=len(self.workers))

    def start_fleet(self, fleet_config: FleetConfig) -> None:
        """The fleet in its thread, and the monitor sampling every store."""
        cfg = self.config
        self.fleet = GatewayFleet(fleet_config)
        self.fleet_thread = threading.Thread(target=self._run_fleet, name="chaos.fleet",
                                             daemon=True)  # fmt: skip
        self.fleet_thread.start()
        self.monitor = Monitor(self.stores, cfg.database, self.fleet)
        self.monitor.start()
        self.note("fleet started", gateways=self.fleet.layout.gateways, speed=cfg.speed)

    # Hooks for what runs beside the fleet (smartcity._chaos_edge.EdgeRun: real edge agents).
    def pause(self) -> None:
        """Stop producing at the end of the run; keep draining and answering resend."""
        assert self.fleet is not None
        self.fleet.pause()

    def drained(self) -> bool:
        """What runs beside the fleet is stored too."""
        return True

    def finish(self, report: ChaosReport) -> None:
        """Add the verdict of what runs beside the fleet to ``report``."""

    def _run_fleet(self) -> None:
        assert self.fleet is not None
        try:
            self.fleet.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the controlling thread
            self.fleet_error = exc

    def close(self) -> None:
        """Stop everything that is still running; safe to call more than once."""
        if self.fleet is not None:
            self.fleet.stop()
        if self.fleet_thread is not None:
            self.fleet_thread.join(180)
        if self.monitor is not None:
            self.monitor.stop()
        if self.api is not None:
            self.api.terminate()
        for w in self.workers:
            w.terminate()
        self.influxd.stop()
        self.broker.stop()

    # -- faults ------------------------------------------------------------------------------
    def worker(self, client_id: str) -> WorkerProcess:
        return next(w for w in self.workers if w.client_id == client_id)

    def begin(self, event: ChaosEvent, now: float) -> None:
        event.started_s = now
        if event.kind == "worker_kill":
            w = self.worker(event.target)
            w.held_down = True
            w.kill()
            self.note("SIGKILL", worker=w.client_id, down_s=event.down_s)
        elif event.kind == "influxd_outage":
            self.influxd.stop()
            self.note("influxd stopped", down_s=event.down_s)
        elif event.kind == "broker_restart":
            self.broker.stop()
            self.note("mosquitto stopped (SIGTERM)", down_s=event.down_s)
        elif event.kind == "broker_kill":
            save_first = event.target == "after autosave"
            saved = kill_broker(self.broker, save_first=save_first)
            self.note("mosquitto SIGKILL", mode=event.target, saved=saved, down_s=event.down_s)
        else:
            self.gateway_fault(event)

    def gateway_fault(self, event: ChaosEvent) -> None:
        """An uplink_loss or reboot of ``gateway_fraction`` of the fleet (the fleet ends it)."""
        cfg = self.config
        assert self.fleet is not None
        kind: Literal["uplink_loss", "reboot"]
        if event.kind == "uplink_loss":
            kind = "uplink_loss"
        elif event.kind == "reboot":
            kind = "reboot"
        else:
            raise ValueError(f"not a gateway fault: {event.kind}")
        n = max(1, round(cfg.gateway_fraction * self.fleet.layout.gateways))
        self.fleet.inject(
            FaultSpec(type=kind, at_s=0, duration_s=event.down_s * cfg.speed, count=n)
        )
        self.note(event.kind, gateways=n, down_s=event.down_s)

    def end(self, event: ChaosEvent) -> None:
        if event.kind == "worker_kill":
            w = self.worker(event.target)
            if not w.running:
                w.start()
            w.held_down = False
            self.note("restarted", worker=w.client_id)
        elif event.kind == "influxd_outage":
            self.influxd.start(timeout=60)
            self.note("influxd started")
        elif event.kind in ("broker_restart", "broker_kill"):
            self.broker.start(timeout=30)
            if event.kind == "broker_kill":
                self.kills.append(
                    {"mode": event.target, "t": time.monotonic(), "wall": time.time()}
                )
            self.note("mosquitto started", port=self.broker.port)
        else:
            self.note(f"{event.kind} over")

    def supervise(self) -> None:
        """Restart workers and the API when they exited on their own (as systemd
        ``Restart=always`` would), and count them."""
        for w in self.workers:
            if not w.held_down and not w.running:
                code = None if w.proc is None else w.proc.returncode
                self.unplanned += 1
                self.note("worker exited, restarting", worker=w.client_id, code=code)
                w.start()
        api = self.api
        if api is not None and not api.stopping and not api.running:
            code = None if api.proc is None else api.proc.returncode
            self.api_restarts += 1
            self.note("api exited, restarting", code=code)
            api.start()
        if self.fleet_error is not None:
            raise SimulatorError(f"the fleet failed: {self.fleet_error}") from self.fleet_error
