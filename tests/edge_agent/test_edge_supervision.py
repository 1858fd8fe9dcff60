"""Each input runs supervised on its own: one that fails is restarted, the others carry on."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import Central, await_until, base_config, make_config, running
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto, free_port


def _failures_metric(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.labels["input"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edge_input_failures_total"
    }


@pytest.mark.integration
def test_a_failing_input_is_restarted_while_the_others_keep_delivering(
    mosquitto: Mosquitto,
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An input whose task raises (here a simulated input with ``fail_after_s``: fault
    injection) used to end the agent's input task group, and with it every other input and
    the agent. Now it is logged with its name, counted (metric, health state ``failed``),
    restarted with backoff and delivers again, while the other input's
    readings keep arriving and the agent keeps running."""
    central = central_factory(mosquitto, topic_root)
    port = free_port()
    data = base_config(tmp_path, mosquitto, topic_root, metrics={"port": port})
    data["inputs"] = [
        {"type": "simulated", "name": "steady", "device_prefix": "steady", "rate_hz": 20},
        {"type": "simulated", "name": "flaky", "device_prefix": "flaky", "rate_hz": 20,
         "fail_after_s": 0.3},
    ]
    agent = EdgeAgent(make_config(data))

    def devices_seen(prefix: str) -> int:
        return sum(d.startswith(prefix) for d, _, _ in central.readings())

    async def main() -> None:
        async with running(agent) as a:
            run_task = next(t for t in asyncio.all_tasks() if t.get_name().startswith("test-"))
            states: set[str] = set()
            deadline = time.monotonic() + 15
            while agent.snapshot().input_failures.get("flaky", 0) < 3:
                assert time.monotonic() < deadline, "flaky was not restarted three times"
                states.add(a.health().links["flaky"])
                await asyncio.sleep(0.01)
            # "failed" while it waits for its restart; "restarting" lasts until the input
            # reports its own state, which a simulated input does at once.
            assert {"failed", "up"} <= states
            steady_before, flaky_before = devices_seen("steady"), devices_seen("flaky")
            await await_until(
                lambda: devices_seen("steady") > steady_before + 20
                and devices_seen("flaky") > flaky_before,
                10, "both inputs delivering after the restarts",
            )
            assert not run_task.done()
            assert a.uplink.connected
            assert a.health().links["steady"] == "up"
            metrics = await asyncio.to_thread(_failures_metric, port)
            assert metrics["flaky"] >= 3
            assert "steady" not in metrics

    with caplog.at_level(logging.ERROR, logger="edge_agent"):
        asyncio.run(main())
    failed = [r for r in caplog.records if getattr(r, "input", None) == "flaky"]
    assert len(failed) >= 3
    assert all("input flaky failed, restarting in" in r.getMessage() for r in failed)
    assert all(r.exc_info is not None for r in failed)
