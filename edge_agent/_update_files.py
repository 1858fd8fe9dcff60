"""The files the agent and the root-side updater exchange (``edge_agent._update``).

``<state_dir>/update-request.json``: the agent's ``update`` command writes it (validated,
mode 0640); the root-side ``smartcity edge update --request`` takes it (reads and deletes
it, and treats its content as untrusted: the agent may be the hostile party).
``<state_dir>/last-update.json``: the updater writes the outcome; the agent reads it
(cached by mtime and size) into its health message and ``/status``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from edge_agent._errors import CommandError
from edge_agent._releases import SHA256_RE, UpdateError

__all__ = [
    "REQUEST_NAME",
    "RESULT_NAME",
    "Status",
    "UpdateRequest",
    "UpdateResult",
    "order_update",
    "read_request",
    "read_result",
    "write_result",
]

log: Final = logging.getLogger("edge_agent")
Status = Literal["pending", "ok", "failed", "rolled_back", "rollback_failed"]
RESULT_NAME: Final = "last-update.json"
REQUEST_NAME: Final = "update-request.json"


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The last update, as kept in ``<state_dir>/last-update.json``."""

    version: str
    status: Status
    ts: float
    previous_version: str | None = None
    reason: str | None = None
    source: str | None = None
    sha256: str | None = None


def write_result(state_dir: Path, result: UpdateResult) -> None:
    _write_json(state_dir / RESULT_NAME, asdict(result), mode=0o644)


_cache: dict[Path, tuple[tuple[int, int], UpdateResult | None]] = {}


def read_result(state_dir: Path) -> UpdateResult | None:
    """The last update result, or None (none yet, unreadable); cached by mtime and size."""
    path = state_dir / RESULT_NAME
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    result: UpdateResult | None = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        if st.st_size <= 64 * 1024:
            data = json.loads(path.read_text(encoding="utf-8"))
            result = UpdateResult(**{k: data.get(k) for k in UpdateResult.__slots__})
    _cache[path] = (key, result)
    return result


def _write_json(path: Path, data: dict[str, Any], *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- the agent's side: the `update` command ----------------------------------------------------
_ARGS: Final = ("url", "sha256", "deadline", "allow_downgrade", "reinstall")


def order_update(state_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The ``update`` command: ``{"url": "https://...whl", "sha256": "<hex>", "deadline": 120,
    "allow_downgrade": false, "reinstall": false}``.

    Validates and writes ``update-request.json`` for the root-side updater; the agent itself
    installs nothing (it has no rights to, and must not: it may be the hostile party)."""
    unknown = set(args) - set(_ARGS)
    if unknown:
        raise CommandError(f"update: unknown argument(s) {sorted(unknown)} ({', '.join(_ARGS)})")
    url, sha, deadline = args.get("url"), args.get("sha256"), args.get("deadline", 120)
    flags = {k: args.get(k, False) for k in ("allow_downgrade", "reinstall")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise CommandError(f"update: {key} must be true or false")
    if not isinstance(url, str) or len(url) > 2048 or not url.startswith(("https://", "http://")):
        raise CommandError("update: url must be an http(s) URL of at most 2048 characters")
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower()):
        raise CommandError("update: sha256 must be 64 hex digits")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise CommandError("update: deadline must be a number of seconds")
    if not 10 <= deadline <= 3600:
        raise CommandError("update: deadline must be between 10 and 3600 s")
    path = state_dir / REQUEST_NAME
    if path.exists():
        raise CommandError("update: another update request is waiting to be carried out")
    request = {
        "url": url,
        "sha256": sha.lower(),
        "deadline": float(deadline),
        **flags,
        "ts": time.time(),
    }
    try:
        _write_json(path, request, mode=0o640)
    except OSError as exc:
        raise CommandError(f"update: cannot write {path}: {exc.strerror or exc}") from exc
    log.info("update requested", extra={"url": url, "sha256": sha, "deadline": deadline, **flags})
    return {"accepted": True, "request": str(path)}


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRequest:
    """An ``update-request.json`` as the root-side updater takes it (checked, untrusted)."""

    url: str
    sha256: str
    deadline_s: float
    allow_downgrade: bool = False
    reinstall: bool = False


def read_request(path: Path, allowed_prefixes: list[str]) -> UpdateRequest:
    """Take (read and delete) an update request; its content is untrusted."""
    try:
        raw = path.read_bytes()[: 16 * 1024]
        path.unlink()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UpdateError(f"update request {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UpdateError(f"update request {path}: not a JSON object")
    try:
        order_update_check = {k: data[k] for k in ("url", "sha256", "deadline")}
    except KeyError as exc:
        raise UpdateError(f"update request {path}: missing {exc}") from exc
    url, sha, deadline = order_update_check.values()
    if not isinstance(url, str) or not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
        raise UpdateError(f"update request {path}: bad url or sha256")
    if not isinstance(deadline, int | float) or not 10 <= deadline <= 3600:
        raise UpdateError(f"update request {path}: bad deadline")
    if not any(url.startswith(p) for p in allowed_prefixes):
        raise UpdateError(f"update request: {url} is not under an --allow-url-prefix")
    # absent in a request an older agent wrote: false
    allow_downgrade, reinstall = data.get("allow_downgrade", False), data.get("reinstall", False)
    if not isinstance(allow_downgrade, bool) or not isinstance(reinstall, bool):
        raise UpdateError(f"update request {path}: allow_downgrade and reinstall must be booleans")
    return UpdateRequest(
        url=url,
        sha256=sha,
        deadline_s=float(deadline),
        allow_downgrade=allow_downgrade,
        reinstall=reinstall,
    )
