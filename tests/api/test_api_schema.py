"""Schemathesis against the served OpenAPI schema: no input makes the API answer 5xx.

Driven through schemathesis' Python API and hypothesis directly (its pytest plugin does not
run under this pytest version).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from api_helpers import ApiStack
from hypothesis import HealthCheck, given, settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_no_input_makes_a_server_error(api_stack: ApiStack) -> None:
    schema = schemathesis.openapi.from_url(f"{api_stack.url}/openapi.json")
    headers = {"X-API-Key": api_stack.keys["admin"]}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/v1/stream/"):
            continue  # streams never end by design; test_api_live covers them
        tested.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=30)
            assert response.status_code < 500, (
                case.method, case.formatted_path, case.query, response.text[:300]
            )
            if response.status_code >= 400:
                assert response.headers["content-type"] in (
                    "application/problem+json", ["application/problem+json"]
                ), (
                    case.method, case.formatted_path, response.status_code
                )

        check()
    assert len(tested) >= 25
