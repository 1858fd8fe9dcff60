"""The smallest InfluxDB v1 client: one InfluxQL query over HTTP(S), stdlib only.

Used where a service needs an answer from ``/query`` without a client library (the
simulators' ledger check, the local stack, tests). The services' own write and read paths
(ingest's sink, the API's storage room) keep their pooled clients.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
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
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(f"{url.rstrip('/')}/query", data=data, method="POST")  # noqa: S310
    if username:
        # HTTP Basic: InfluxDB 1.x reads u/p only from the URL (where they would be logged),
        # never from a POST body.
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:  # noqa: S310
            answer: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:  # its socket: closed here, not whenever the traceback is collected
            detail = _error_text(exc.read(4096))
        raise InfluxQueryError(f"query to {url} failed: HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise InfluxQueryError(f"query to {url} failed: {exc}") from exc
    for result in answer.get("results", []):
        if "error" in result:
            raise InfluxQueryError(f"InfluxQL error: {result['error']} in {q!r}")
    return answer


def _error_text(body: bytes) -> str:
    """InfluxDB's ``{"error": "..."}`` body, or the body's first 200 characters."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        return error[:500]
    return body.decode("utf-8", "replace")[:200]
