"""The API's broker link on the shared session layer, against a real mosquitto that goes
away and comes back: readiness and metrics follow the connection, the subscriptions are made
again after a broker restart, and the API serves while the broker is not there yet."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from api_helpers import ApiStack, Publisher, device, start_stack, wait_until

from smartcity._localstack import Influxd, Mosquitto

pytestmark = pytest.mark.integration


def _metric(stack: ApiStack, name: str) -> float:
    value = stack.server.services.metrics.registry.get_sample_value(name)
    return value if value is not None else 0.0


def _ready(stack: ApiStack) -> tuple[int, bool]:
    r = stack.get("/readyz", role=None)
    return r.status_code, r.json()["broker"]


def _pm25(stack: ApiStack, gw: str) -> object:
    r = stack.get(f"/v1/live/{gw}/aq-1")
    return r.json()["readings"][0]["fields"]["pm25"] if r.status_code == 200 else None


def test_subscriptions_come_back_after_a_broker_restart(
    mosquitto_factory: Callable[..., Mosquitto], influxd: Influxd, influx_db: str,
    tmp_path: Path,
) -> None:
    broker = mosquitto_factory()
    root = f"t{uuid.uuid4().hex[:12]}"
    stack = start_stack(broker, influxd, root=root, database=influx_db,
                        db_path=tmp_path / "api.sqlite3")
    try:
        assert _ready(stack) == (200, True)
        assert _metric(stack, "smartcity_api_mqtt_connected") == 1
        publisher = Publisher(broker, root)
        publisher.birth("rs-gw", [device("aq-1", "air", area="centre")])
        publisher.reading("rs-gw", "aq-1", "AirQualityObserved", {"pm25": 1.0})
        wait_until(lambda: _pm25(stack, "rs-gw") == 1.0)
        publisher.close()

        broker.stop()
        wait_until(lambda: _ready(stack) == (503, False), 15)
        assert _metric(stack, "smartcity_api_mqtt_connected") == 0
        assert _metric(stack, "smartcity_api_mqtt_connection_losses_total") >= 1
        # Publishing while the broker is gone is refused at once (503), not queued.
        engineer = stack.client("engineer")
        pushed = engineer.put("/v1/gateways/rs-gw/config", json={"version": 1, "config": {}})
        assert pushed.status_code == 503

        broker.start()
        wait_until(lambda: _ready(stack) == (200, True), 30)
        assert _metric(stack, "smartcity_api_mqtt_reconnects_total") >= 1
        assert _metric(stack, "smartcity_api_mqtt_connected") == 1
        status = stack.server.services.broker.status
        assert status.connected
        assert status.reconnects >= 1
        # Nothing was kept by the broker (clean start): the telemetry arrives because the
        # API subscribed again.
        publisher = Publisher(broker, root)
        wait_until(lambda: (
            publisher.reading("rs-gw", "aq-1", "AirQualityObserved", {"pm25": 2.0}) and
            _pm25(stack, "rs-gw") == 2.0
        ), 15, interval=0.5)
        publisher.close()
        pushed = engineer.put("/v1/gateways/rs-gw/config", json={"version": 2, "config": {}})
        assert pushed.status_code == 202
    finally:
        stack.close()


def test_the_api_serves_before_the_broker_is_there(
    influxd: Influxd, influx_db: str, tmp_path: Path
) -> None:
    broker = Mosquitto(data_dir=tmp_path / "mosquitto")  # not started yet
    root = f"t{uuid.uuid4().hex[:12]}"
    stack = start_stack(broker, influxd, root=root, database=influx_db,
                        db_path=tmp_path / "api.sqlite3", mqtt={"connect_timeout_s": 1.0})
    try:
        assert _ready(stack) == (503, False)
        assert stack.get("/healthz", role=None).status_code == 200
        assert stack.server.services.broker.status.connect_failures >= 1
        broker.start()
        wait_until(lambda: _ready(stack) == (200, True), 30)
        publisher = Publisher(broker, root)
        try:
            publisher.birth("late-gw", [device("aq-1", "air")])
            publisher.reading("late-gw", "aq-1", "AirQualityObserved", {"pm25": 3.0})
            wait_until(lambda: _pm25(stack, "late-gw") == 3.0)
        finally:
            publisher.close()
    finally:
        stack.close()
        broker.stop()
