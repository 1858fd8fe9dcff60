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
from ingest_testkit import Publisher, purged_sessions

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


#: Every persistent session a test made is removed afterwards.
_purge_sessions = pytest.fixture(autouse=True)(purged_sessions)
