"""The smallest InfluxDB v1 client: one InfluxQL query over HTTP(S), stdlib only.

Used where a service needs an answer from ``/query`` without a client library (the
simulators' ledger check, the local stack, tests). The services' own write and read paths
(ingest's sink, the API's storage room) keep their pooled clients.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["InfluxQueryError", "influxql"]


class InfluxQueryError(RuntimeError):
    """InfluxDB could not be reached, or answered the query with an error."""


def influxql(
    url: str,
    q: str,
    *,
    db: str | None = None,
    epoch: str = "ns",
    username: str | None = None,
    password: str | None = None,
    context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Run InfluxQL against any InfluxDB v1 ``/query`` endpoint; return the decoded answer.

    ``context``: how an ``https://`` server is verified (``None``: the system's CA store).
    Raises :class:`InfluxQueryError` when the server cannot be reached or answers an error.
    """
    params = {"q": q, "epoch": epoch}
    if db:
        params["db"] = db
    if username:
        params["u"] = username
        params["p"] = password or ""
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/query", data=data, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:  # noqa: S310
            answer: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise InfluxQueryError(f"query to {url} failed: {exc}") from exc
    for result in answer.get("results", []):
        if "error" in result:
            raise InfluxQueryError(f"InfluxQL error: {result['error']} in {q!r}")
    return answer
