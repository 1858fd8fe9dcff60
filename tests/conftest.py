"""Fixtures that run the real broker and the real database.

- ``mosquitto`` / ``influxd``: one server each for the whole session, on free loopback
  ports with temporary data directories. Tests must not stop them; a test that cuts a
  service asks the factory fixtures for a private one.
- ``mosquitto_factory`` / ``influxd_factory``: private servers, stopped after the test.
- ``topic_root``: a fresh MQTT topic root per test, so tests never see each other's messages.
- ``influx_db``: a fresh database per test on the session influxd, dropped afterwards.

A missing binary fails the test with the install command; it is never a silent skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smartcity._localstack import Influxd, Mosquitto, ServiceError
from tests.tls_helpers import Pki, make_pki


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a slow test first, otherwise in their order: on ``make test``'s two
    workers (one file at a time each, in this order) the long files start early and the
    short ones fill the gaps at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)


def _start(service: Mosquitto | Influxd) -> None:
    try:
        service.start()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto"))
    _start(broker)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(data_dir=tmp_path_factory.mktemp("influxd"))
    _start(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with server, client and rogue certificates (tests/tls_helpers.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def influxd_https(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Influxd]:
    """A private influxd serving HTTPS with ``pki``'s server certificate (per module: some
    tests swap its certificate)."""
    server = Influxd(data_dir=tmp_path_factory.mktemp("influxd-https"), tls=pki.influxd_tls())
    _start(server)
    yield server
    server.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    started: list[Mosquitto] = []

    def make(**kwargs: object) -> Mosquitto:
        broker = Mosquitto(data_dir=tmp_path / f"mosquitto-{len(started)}", **kwargs)  # type: ignore[arg-type]
        _start(broker)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def influxd_factory(tmp_path: Path) -> Iterator[Callable[[], Influxd]]:
    started: list[Influxd] = []

    def make() -> Influxd:
        server = Influxd(data_dir=tmp_path / f"influxd-{len(started)}")
        _start(server)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def topic_root() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def influx_db(influxd: Influxd) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    influxd.create_database(name)
    yield name
    influxd.drop_database(name)
