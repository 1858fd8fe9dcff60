"""Fixtures for API tests: a real API (uvicorn on a thread) on the session mosquitto/influxd.

``api_stack`` is module-scoped: one API, topic root, InfluxDB database and operator database
per test module, with a key for every role. Tests in a module use distinct gateway ids.
Helpers live in ``api_helpers``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test modules import their helpers as ``api_helpers``; this directory has no __init__.py.
sys.path.insert(0, str(Path(__file__).parent))

from api_helpers import ApiStack, Publisher, start_stack

from smartcity._localstack import Influxd, Mosquitto


@pytest.fixture(scope="module")
def api_stack(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    root = f"t{uuid.uuid4().hex[:12]}"
    database = f"api_{uuid.uuid4().hex[:12]}"
    influxd.create_database(database)
    stack = start_stack(
        mosquitto, influxd, root=root, database=database,
        db_path=tmp_path_factory.mktemp("apidb") / "api.sqlite3",
    )
    try:
        yield stack
    finally:
        stack.close()
        influxd.drop_database(database)


@pytest.fixture
def publisher(api_stack: ApiStack) -> Iterator[Publisher]:
    pub = Publisher(api_stack.mosquitto, api_stack.root)
    yield pub
    pub.close()
