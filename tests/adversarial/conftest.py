"""Adversarial tests: every ingest worker session a test made is removed afterwards."""

from __future__ import annotations

import pytest

from tests.ingest.ingest_testkit import purged_sessions

_purge_sessions = pytest.fixture(autouse=True)(purged_sessions)
