"""The fast lane (api._fastlane) answers the latest-values reads exactly as FastAPI's routes do.

Two apps from the same settings, one with ``fast_lane: false`` (every request through
FastAPI), the same live state and keys; every request goes to both as a raw ASGI call and
the two answers (status, every header, body bytes) must be equal. Which of the two paths
answered is checked too (the FastAPI handlers' ``json_response`` is counted), so a fast lane
that passed everything on would fail here. No broker or InfluxDB is needed: the live state
is filled directly (the routes read only it); test_api_live covers the same paths fed by a
real broker through uvicorn.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import ApiSettings, Database, create_app
from api.routes import _inventory
from api.state import Latest

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

ROLES = ("viewer", "admin")


class Pair:
    """The same API twice: fast lane on (``fast``) and off (``slow``)."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        url = f"sqlite:///{tmp / 'api.sqlite3'}"
        db = Database(url)
        db.create_schema()
        self.keys = {role: db.create_key(name=f"t-{role}", role=role)[1] for role in ROLES}
        _row, revoked = db.create_key(name="t-revoked", role="admin")
        db.revoke_key(_row.id)
        self.keys["revoked"] = revoked
        values: dict[str, Any] = {
            "database_url": url, "rate_limit_per_s": 10_000.0, "rate_limit_burst": 10_000,
            "auth_failures_per_s": 10_000.0, "auth_failures_burst": 10_000,
            "cors_origins": ["https://ops.example"], **overrides,
        }
        self.fast = create_app(ApiSettings(**values), db=db)
        self.slow = create_app(ApiSettings(**values, fast_lane=False), db=db)
        for app in (self.fast, self.slow):
            fill(app)

    def both(self, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None
             = None, method: str = "GET") -> tuple[Answer, Answer]:
        async def run() -> tuple[Answer, Answer]:
            return (await call(self.fast, method, path, query, headers or []),
                    await call(self.slow, method, path, query, headers or []))

        return asyncio.run(run())

    def key(self, role: str) -> list[tuple[bytes, bytes]]:
        return [(b"x-api-key", self.keys[role].encode())]


def fill(app: FastAPI) -> None:
    live = app.state.services.live
    for g in range(3):
        for d in range(3):
            for m, fields in (("AirQualityObserved", {"pm25": 12.5 + g, "no2": 30}),
                              ("TrafficFlowObserved", {"intensity": 600 + d})):
                live.update(Latest(
                    f"gw-{g}", f"dev-{d}", m, f"2026-01-01T00:00:0{d}.000Z",
                    1_767_225_600_000_000_000 + d, dict(fields), "good",
                    {"lane": str(d)} if d == 2 else {}, "centre" if g == 1 else None,
                ))


async def call(app: FastAPI, method: str, path: str, query: bytes,
               headers: list[tuple[bytes, bytes]]) -> Answer:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": method, "scheme": "http", "path": path,
        "raw_path": quote(path).encode(), "root_path": "", "query_string": query,
        "headers": [(b"host", b"api.test"), *headers], "client": ("10.0.0.7", 40000),
        "server": ("api.test", 80),
    }
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start["headers"]), body


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """One pair for the read-only comparisons (budgets too large to run out here)."""
    return Pair(tmp_path_factory.mktemp("fastlane"))


@pytest.fixture
def handler_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the FastAPI handlers of the inventory routes answered."""
    calls: list[int] = []
    real = _inventory.json_response

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_inventory, "json_response", counted)
    return calls


def test_latest_of_a_device_is_answered_by_the_fast_lane_byte_for_byte(
    pair: Pair, handler_calls: list[int]
) -> None:
    fast, slow = pair.both("/v1/live/gw-1/dev-2", headers=pair.key("viewer"))
    assert handler_calls == [1]  # the slow app's handler only
    assert fast == slow
    assert fast[0] == 200
    assert b'"lane":"2"' in fast[2]
    assert b'"area":"centre"' in fast[2]
    handler_calls.clear()
    fast, slow = pair.both("/v1/live", headers=pair.key("viewer"))
    assert handler_calls == [1]
    assert fast == slow
    assert fast[0] == 200


@pytest.mark.parametrize(("path", "query"), [
    ("/v1/live/gw-0/dev-0", b""),
    ("/v1/live/gw-0/dev-0", b"ignored=1&limit=0"),  # the route takes no query: ignored
    ("/v1/live/gw-0/nope", b""),  # 404 problem
    ("/v1/live/gw-9/dev-0", b""),
    ("/v1/live/-bad/dev-0", b""),  # pattern: 400 from FastAPI
    ("/v1/live/gw-0/dev-0/", b""),
    ("/v1/live/gw-0", b""),
    ("/v1/live/", b""),
    ("/v1/live/gw-0/dev 0", b""),
    ("/v1/live/" + "g" * 65 + "/dev-0", b""),
    ("/v1/live/gw-0/dév", b""),
    ("/v1/live", b""),
    ("/v1/live", b"measurement=AirQualityObserved&limit=2&offset=1"),
    ("/v1/live", b"gateway=gw-1&area=centre"),
    ("/v1/live", b"device=dev-2&measurement=TrafficFlowObserved"),
    ("/v1/live", b"limit=0"),
    ("/v1/live", b"limit=1001"),
    ("/v1/live", b"limit=1000&offset=10000000"),
    ("/v1/live", b"offset=10000001"),
    ("/v1/live", b"limit=05"),
    ("/v1/live", b"limit=+5"),
    ("/v1/live", b"limit=%205"),
    ("/v1/live", b"limit=5.0"),
    ("/v1/live", b"limit=2&limit=3"),
    ("/v1/live", b"gateway="),
    ("/v1/live", b"gateway"),
    ("/v1/live", b"measurement=1bad"),
    ("/v1/live", b"area=%00x"),
    ("/v1/live", b"area=a%20b"),
    ("/v1/live", b"Limit=2&unknown=%ff"),
    ("/v1/livex", b""),
])
@pytest.mark.parametrize("who", ["viewer", "admin", "revoked", "bearer", "none", "malformed"])
def test_every_answer_is_the_same_as_fastapis(shared: Pair, path: str, query: bytes,
                                              who: str) -> None:
    pair = shared
    headers: list[tuple[bytes, bytes]] = {
        "viewer": pair.key("viewer"),
        "admin": pair.key("admin"),
        "revoked": pair.key("revoked"),
        "bearer": [(b"authorization", b"Bearer " + pair.keys["viewer"].encode())],
        "none": [],
        "malformed": [(b"x-api-key", b"not-a-key")],
    }[who]
    fast, slow = pair.both(path, query, [*headers, (b"origin", b"https://ops.example")])
    assert fast == slow, (path, query, who)


def test_headers_are_read_as_starlette_reads_them(pair: Pair) -> None:
    viewer = pair.keys["viewer"].encode()
    for headers in (
        [(b"x-api-key", viewer), (b"x-api-key", b"sck_wrong")],  # the first counts
        [(b"x-api-key", b"sck_wrong"), (b"x-api-key", viewer)],
        [(b"x-api-key", b""), (b"authorization", b"Bearer " + viewer)],  # empty: bearer
        [(b"authorization", b"bearer  " + viewer + b"  ")],
        [(b"authorization", b"Basic " + viewer)],
        [(b"authorization", b"Bearer ")],
    ):
        fast, slow = pair.both("/v1/live/gw-2/dev-1", headers=headers)
        assert fast == slow, headers


def test_other_methods_and_cors_preflight_go_through_fastapi(pair: Pair) -> None:
    for method in ("HEAD", "POST", "PUT", "DELETE"):
        fast, slow = pair.both("/v1/live/gw-0/dev-0", headers=pair.key("viewer"), method=method)
        assert fast == slow, method
        assert fast[0] == 405, method
    preflight = [(b"origin", b"https://ops.example"),
                 (b"access-control-request-method", b"GET")]
    fast, slow = pair.both("/v1/live", headers=preflight, method="OPTIONS")
    assert fast == slow
    assert fast[0] == 200
    fast, _ = pair.both("/v1/live", headers=pair.key("viewer") + preflight[:1])
    assert (b"access-control-allow-origin", b"https://ops.example") in fast[1]


_KEYS = st.sampled_from(["measurement", "gateway", "device", "area", "offset", "limit",
                         "x", "LIMIT", "gateway[]"])
_VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "2", "100", "1000", "1001", "-1", "00", "+1", " 1", "1e2",
                     "１", "10000000", "10000001", "999999999", "gw-1", "dev-2", "centre",
                     "AirQualityObserved", "Air Quality", "a b", "é", "gw-1\n", ".x", "x" * 65]),
    st.text(max_size=8),
)


@given(query=st.lists(st.tuples(_KEYS, _VALUES), max_size=4))
@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_any_query_of_the_list_is_answered_as_fastapi_answers_it(
    query: list[tuple[str, str]], shared: Pair
) -> None:
    pair = shared
    raw = "&".join(f"{quote(k)}={quote(v)}" for k, v in query).encode()
    fast, slow = pair.both("/v1/live", raw, pair.key("viewer"))
    assert fast == slow, raw


def test_the_rate_budget_is_spent_and_refused_in_the_fast_lane(
    tmp_path: Path, handler_calls: list[int]
) -> None:
    pair = Pair(tmp_path, rate_limit_per_s=0.01, rate_limit_burst=3)
    viewer = pair.key("viewer")
    statuses = []
    for path in ("/v1/live/gw-0/dev-0", "/v1/live", "/v1/devices", "/v1/live/gw-0/dev-0"):
        fast, slow = pair.both(path, headers=viewer)
        assert fast == slow, path
        statuses.append(fast[0])
    # Three tokens, shared by the fast lane and FastAPI's routes of the same key.
    assert statuses == [200, 200, 200, 429]
    assert (b"retry-after", b"100") in fast[1]
    assert b"rate-limited" in fast[2]
    # The slow app's handlers (live, list, devices) and the fast app's (devices).
    assert handler_calls == [1, 1, 1, 1]


def test_unauthenticated_floods_meet_the_failure_limiter(tmp_path: Path) -> None:
    pair = Pair(tmp_path, auth_failures_per_s=0.01, auth_failures_burst=2)
    answers = [pair.both("/v1/live/gw-0/dev-0", headers=[(b"x-api-key", b"sck_nope")])
               for _ in range(3)]
    assert all(fast == slow for fast, slow in answers)
    assert [fast[0] for fast, _ in answers] == [401, 401, 429]


def test_requests_are_counted_under_the_same_route(pair: Pair) -> None:
    for path in ("/v1/live/gw-0/dev-0", "/v1/live/gw-0/none", "/v1/live"):
        pair.both(path, headers=pair.key("viewer"))
    pair.both("/v1/live/gw-0/dev-0")

    def counts(app: FastAPI) -> dict[tuple[str, str], float]:
        registry = app.state.services.metrics.registry
        return {
            (s.labels["route"], s.labels["status"]): s.value
            for metric in registry.collect() if metric.name == "smartcity_api_requests"
            for s in metric.samples if s.name.endswith("_total")
        }

    fast = counts(pair.fast)
    assert fast == counts(pair.slow)
    assert fast[("/v1/live/{gateway}/{device}", "200")] == 1
    assert fast[("/v1/live/{gateway}/{device}", "404")] == 1
    assert fast[("/v1/live/{gateway}/{device}", "401")] == 1
    assert fast[("/v1/live", "200")] == 1


def test_the_openapi_document_is_unchanged(pair: Pair) -> None:
    assert pair.fast.openapi() == pair.slow.openapi()
    live = pair.fast.openapi()["paths"]["/v1/live/{gateway}/{device}"]["get"]
    assert live["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    fast, slow = pair.both("/openapi.json")
    assert fast == slow
