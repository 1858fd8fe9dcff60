"""A running worker reports its event loop's lag on /metrics."""

from __future__ import annotations

import pytest
from ingest_testkit import make_config, wait_for

from ingest import WorkerThread
from smartcity._localstack import Influxd, Mosquitto

pytestmark = pytest.mark.integration


def test_a_worker_measures_its_event_loop_lag(
    mosquitto: Mosquitto, influxd: Influxd, topic_root: str, influx_db: str,
) -> None:
    with WorkerThread(make_config(mosquitto, influxd, topic_root, influx_db)) as running:
        value = running.worker.metrics.registry.get_sample_value
        wait_for(lambda: (value("smartcity_ingest_event_loop_lag_seconds_count") or 0) >= 3,
                 10, "lag probes")
