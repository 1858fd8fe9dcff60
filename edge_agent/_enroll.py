"""`smartcity edge enroll`: redeem a claim token for this gateway's own broker credentials.

::

    engineer: POST /v1/gateways/{id}/enrolment (API, engineer key) ─▶ one-time token T
    gateway:  smartcity edge enroll --api https://api.city.example --token T --out DIR
                  POST /v1/enrol {"token": T} ─▶ {gateway, username, password, client_id,
                                                  broker: {host, port, hosts, protocol, tls,
                                                           ca_pem, topic_root}}
              DIR/broker-password  0600  the password (first line), never printed
              DIR/broker-ca.pem    0644  the CA to trust at the broker (when the API gave one)
              DIR/broker.yaml      0644  the ``broker:`` block for edge.yaml, naming both

The same on both profiles: with mosquitto the block says ``protocol: mqtt5``; with the NATS
cluster (docs/cluster.md) ``protocol: mqtt311`` and ``hosts``, the other nodes to fail over
to. The token travels only to the API, over HTTPS unless the API is on loopback (or
``--allow-insecure``). Files are written to a temporary name and renamed, so a failed run
leaves the previous credentials in place. Standard library only (a gateway install has no
HTTP client package).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edge_agent._errors import EdgeError
from foundation import is_loopback
from foundation.mqtt import parse_address

__all__ = ["EnrollError", "Enrolled", "enroll"]

#: The largest answer read from the API (credentials and a CA bundle).
_MAX_ANSWER: Final = 1024 * 1024


class EnrollError(EdgeError):
    """The API refused the token or could not be reached; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Enrolled:
    gateway: str
    client_id: str
    broker: str
    password_file: Path
    ca_file: Path | None
    broker_yaml: Path


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


def _post(url: str, body: dict[str, str], *, ca_file: Path | None, timeout: float) -> Any:
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked by the caller)
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
            return json.loads(resp.read(_MAX_ANSWER))
    except urllib.error.HTTPError as exc:
        detail = ""
        with contextlib.suppress(ValueError, AttributeError, OSError):
            detail = str(json.loads(exc.read(64 * 1024)).get("detail", ""))
        raise EnrollError(
            f"the API refused the enrolment ({exc.code}): {detail or exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrollError(f"cannot reach the API at {url}: {reason}") from None
    except ValueError as exc:
        raise EnrollError(f"the API at {url} did not answer JSON: {exc}") from None


def _yaml_block(answer: dict[str, Any], password_file: Path, ca_file: Path | None) -> str:
    broker = answer["broker"]
    lines = [
        "# Written by `smartcity edge enroll`: this gateway's broker login. Put this block",
        "# into edge.yaml (replacing its broker: block), with gateway.id set to "
        f"{answer['gateway']}.",
        "broker:",
        f"  host: {json.dumps(broker['host'])}",
        f"  port: {int(broker['port'])}",
        f"  protocol: {json.dumps(broker.get('protocol', 'mqtt5'))}",
        f"  topic_root: {json.dumps(broker['topic_root'])}",
        f"  client_id: {json.dumps(answer['client_id'])}",
        f"  username: {json.dumps(answer['username'])}",
        f"  password_file: {json.dumps(str(password_file))}",
    ]
    if broker.get("hosts"):
        lines.append(f"  hosts: {json.dumps(broker['hosts'])}")
    if broker.get("tls"):
        ca = "" if ca_file is None else f"ca_file: {json.dumps(str(ca_file))}"
        lines.append(f"  tls: {{{ca}}}")
    return "\n".join(lines) + "\n"


def _checked(answer: Any) -> dict[str, Any]:
    try:
        broker = answer["broker"]
        for key in ("gateway", "username", "password", "client_id"):
            if not isinstance(answer[key], str) or not answer[key] or "\n" in answer[key]:
                raise TypeError(key)
        if not isinstance(broker["host"], str) or not 0 < int(broker["port"]) < 65536:
            raise TypeError("broker")
        if broker.get("ca_pem") is not None and "BEGIN CERTIFICATE" not in broker["ca_pem"]:
            raise TypeError("broker.ca_pem")
        if broker.get("protocol", "mqtt5") not in ("mqtt5", "mqtt311"):
            raise TypeError("broker.protocol")
        hosts = broker.get("hosts") or []
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise TypeError("broker.hosts")
        for address in hosts:
            parse_address(address)  # as the uplink's broker.hosts will read it
    except (KeyError, TypeError, ValueError) as exc:
        raise EnrollError(f"the API's answer is not an enrolment ({exc})") from None
    return dict(answer)


def enroll(
    api: str,
    token: str,
    out: Path,
    *,
    ca_file: Path | None = None,
    allow_insecure: bool = False,
    timeout: float = 30.0,
) -> Enrolled:
    """Redeem ``token`` at ``api``; write the credentials into ``out``."""
    parts = urllib.parse.urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnrollError(f"--api must be an http(s):// URL, got {api!r}")
    if parts.scheme == "http" and not (is_loopback(parts.hostname) or allow_insecure):
        raise EnrollError(
            f"refusing to send the claim token over plain http to {parts.hostname}: use "
            "https:// (or --allow-insecure on a test bench)"
        )
    token = token.strip()
    if not token:
        raise EnrollError("the claim token is empty")
    url = api.rstrip("/") + "/v1/enrol"
    answer = _checked(_post(url, {"token": token}, ca_file=ca_file, timeout=timeout))
    try:
        out.mkdir(parents=True, exist_ok=True)
        password_file = out / "broker-password"
        _write(password_file, answer["password"] + "\n", 0o600)
        written_ca = None
        if answer["broker"].get("ca_pem"):
            written_ca = out / "broker-ca.pem"
            _write(written_ca, answer["broker"]["ca_pem"], 0o644)
        broker_yaml = out / "broker.yaml"
        _write(broker_yaml, _yaml_block(answer, password_file, written_ca), 0o644)
    except OSError as exc:
        raise EnrollError(f"cannot write the credentials into {out}: {exc}") from None
    broker = answer["broker"]
    return Enrolled(
        gateway=answer["gateway"],
        client_id=answer["client_id"],
        broker=f"{'mqtts' if broker.get('tls') else 'mqtt'}://{broker['host']}:{broker['port']}",
        password_file=password_file,
        ca_file=written_ca,
        broker_yaml=broker_yaml,
    )
