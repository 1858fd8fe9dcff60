"""The agent as deployed: ``smartcity edge run`` in its own process, scraped over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from edge_helpers import Central, base_config, wait_until
from prometheus_client.parser import text_string_to_metric_families

from smartcity._localstack import Mosquitto, free_port


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample name: value} for the gateway's samples."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("gateway") == "gw-test":
                labels = sorted((k, v) for k, v in s.labels.items() if k != "gateway")
                out[s.name + "".join(f",{k}={v}" for k, v in labels)] = s.value
    return out


@pytest.mark.integration
def test_smartcity_edge_run_serves_metrics_and_stops_cleanly(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    port = free_port()
    data = base_config(tmp_path, mosquitto, topic_root)
    data["metrics"] = {"port": port}
    data["inputs"] = [
        {"type": "simulated", "name": "sim", "devices": 3, "fields": ["v", "w"], "rate_hz": 20}
    ]
    # every "w" sample (a sine of amplitude 10) is out of range; "v" passes unprocessed
    data["processors"] = [
        {"match": {"field": "w"}, "stages": [{"type": "validity", "min": 100, "max": 200}]}
    ]
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(data))
    script = Path(sys.executable).with_name("smartcity")
    log = (tmp_path / "agent.log").open("ab")
    proc = subprocess.Popen(
        [str(script), "edge", "run", "--config", str(cfg), "--log-format", "json"],
        stdout=log,
        stderr=log,
    )
    try:
        wait_until(lambda: len(central.readings()) > 20, 20, "simulated readings at the broker")
        m: dict[str, float] = {}

        def scraped() -> bool:
            nonlocal m
            m = scrape(port)
            return m.get("edge_batches_acked_total", 0) > 0

        wait_until(scraped, 10, "acked batches in the metrics")
        assert m["edge_uplink_up"] == 1.0
        assert m["edge_readings_submitted_total"] > 20
        assert m["edge_spool_dropped_readings_total"] == 0
        assert m["edge_stage_dropped_total,stage=validity"] > 20
        assert "edge_spool_oldest_age_seconds" in m
        # `smartcity edge run` loads the edge agent only (no server packages): with every
        # service's CLI imported it measured 99 MB, the agent alone about 58 MB.
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])
        assert rss_kb < 80 * 1024, rss_kb
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        scrape(port)  # the endpoint went away with the agent
