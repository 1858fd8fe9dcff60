"""Fixtures for edge agent tests (helpers live in ``edge_helpers``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Test modules import their helpers as ``edge_helpers``; this directory has no __init__.py
# (test dirs are not packages here), so make it importable explicitly.
sys.path.insert(0, str(Path(__file__).parent))

from edge_helpers import Central

from smartcity._localstack import Mosquitto


@pytest.fixture
def central_factory() -> Iterator[Callable[..., Central]]:
    made: list[Central] = []

    def make(broker: Mosquitto, root: str, gateway: str = "gw-test") -> Central:
        c = Central(broker.port, root, gateway, client_id=f"central-{len(made)}-{root}")
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
