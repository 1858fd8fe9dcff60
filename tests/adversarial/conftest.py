"""Adversarial tests: every ingest worker session a test made is removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ingest.ingest_testkit import SESSIONS, purge_session


@pytest.fixture(autouse=True)
def _purge_sessions() -> Iterator[None]:
    """Workers have persistent sessions; on the session broker they would outlive the test,
    stay members of its share group and keep queueing messages."""
    SESSIONS.clear()
    yield
    sessions = list(SESSIONS)
    SESSIONS.clear()
    for broker, client_id in sessions:
        if broker.running:
            purge_session(broker, client_id)
