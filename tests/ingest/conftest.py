"""Fixtures for the ingest tests (helpers live in ingest_testkit.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test modules import ingest_testkit from their own directory (pytest puts it on
# sys.path for them); conftest is imported before they are.
sys.path.insert(0, str(Path(__file__).parent))
from ingest_testkit import SESSIONS, Publisher, purge_session

from smartcity._localstack import Mosquitto


@pytest.fixture
def base_ts() -> int:
    """An hour ago, whole seconds: inside any retention policy."""
    return (time.time_ns() // 10**9 - 3600) * 10**9


@pytest.fixture
def publisher(mosquitto: Mosquitto, topic_root: str) -> Iterator[Publisher]:
    pub = Publisher(mosquitto, topic_root)
    yield pub
    pub.close()


@pytest.fixture(autouse=True)
def _purge_sessions() -> Iterator[None]:
    """Remove every persistent session the test created from the broker afterwards.

    Workers have persistent sessions (7 days by default); on the session broker they would
    outlive the test, stay members of its share group and keep queueing messages.
    """
    SESSIONS.clear()
    yield
    sessions = list(SESSIONS)
    SESSIONS.clear()
    for broker, client_id in sessions:
        if broker.running:
            purge_session(broker, client_id)
