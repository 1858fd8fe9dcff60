"""Helpers for the cluster tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from smartcity._localstack_nats import NatsCluster

ClusterFactory = Callable[..., NatsCluster]


def password() -> str:
    return secrets.token_urlsafe(18)
